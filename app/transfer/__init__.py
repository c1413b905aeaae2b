"""Moving bytes over ASGI. Never resolves paths: takes an opened file and a response plan."""
