"""`conveyor serve`: the HTTP API (OpenAPI 3.1) and the dashboard, one ASGI app (issue 17)."""
