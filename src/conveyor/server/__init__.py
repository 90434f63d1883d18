"""`conveyor serve`: the HTTP API (OpenAPI 3.1) and the dashboard, one ASGI app.

``create_app(app)`` builds it; ``conveyor serve APP`` runs it with uvicorn. Needs the ``serve``
extra: ``pip install 'conveyor[serve]'``.
"""

from conveyor.server.asgi import create_app
from conveyor.server.auth import Role

__all__ = ["Role", "create_app"]
