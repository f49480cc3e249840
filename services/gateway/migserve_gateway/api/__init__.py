"""The HTTP layer: FastAPI routers, body reading, error handlers and middleware."""
