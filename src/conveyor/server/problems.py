"""Errors as RFC 9457 problem details (``application/problem+json``), with clear messages."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.model.errors import (
    ApprovalError,
    BackendUnavailableError,
    ConfigurationError,
    ConveyorError,
    PayloadTooLargeError,
    PayloadValidationError,
    UnknownNameError,
    UnstorableTextError,
)

MEDIA_TYPE = "application/problem+json"

logger = logging.getLogger("conveyor.server")


class ProblemDetails(BaseModel):
    """RFC 9457: ``type`` is about:blank with ``title`` the status phrase, ``detail`` says what."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ProblemDetails(
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


_STATUS: list[tuple[type[ConveyorError], int]] = [
    (UnknownNameError, 404),
    (PayloadValidationError, 422),
    (UnstorableTextError, 422),
    (PayloadTooLargeError, 413),
    (ApprovalError, 409),
    (ConfigurationError, 400),
    (BackendUnavailableError, 503),
]


def status_of(exc: ConveyorError) -> int:
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 500)


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    out = []
    for error in errors:
        item = {key: error.get(key) for key in ("loc", "msg", "type") if key in error}
        item["loc"] = [str(part) for part in item.get("loc", ())]
        out.append(item)
    return out


def install(api: FastAPI) -> None:
    """Every error of ``api`` as problem+json."""

    @api.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            request, exc.status, exc.detail, title=exc.title, errors=exc.errors, headers=exc.headers
        )

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable(exc.errors())
        where = "; ".join(f"{'.'.join(e['loc'])}: {e.get('msg', '')}" for e in errors[:5])
        return problem_response(request, 422, f"the request is invalid: {where}", errors=errors)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return problem_response(request, exc.status_code, detail, headers=exc.headers)

    @api.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        detail = f"{type(exc).__name__} while handling the request (the server log has its traceback)"
        return problem_response(request, 500, detail)

    @api.exception_handler(ConveyorError)
    async def _conveyor(request: Request, exc: ConveyorError) -> JSONResponse:
        status = status_of(exc)
        return problem_response(request, status, f"{type(exc).__name__}: {exc}")
