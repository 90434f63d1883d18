"""The audit log: every mutating HTTP call, who made it, on what, when.

Each entry is one structured record on the logger ``conveyor.audit`` (route it to a file or your
log pipeline); calls on a workflow or a job also leave their ``by`` in its history (approvals,
cancellations).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from conveyor.server.auth import Principal

logger = logging.getLogger("conveyor.audit")


def record(principal: Principal, action: str, target: str, **detail: Any) -> None:
    """Log ``action`` on ``target`` by ``principal`` now."""
    logger.info(
        "%s %s by %s",
        action,
        target,
        principal.name,
        extra={
            "audit": {
                "at": time.time(),
                "by": principal.name,
                "role": principal.role.value,
                "action": action,
                "target": target,
                **detail,
            }
        },
    )
