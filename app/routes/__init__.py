"""Thin FastAPI routers: read the request, call storage/http/transfer, return a response."""
