"""Thin FastAPI routers: read the request, call storage/http/transfer, return a response.

FastAPI imports `pydantic.v1` when it first declares a route, only to reject pydantic v1 models,
and that module costs each worker ~8 MiB; Ferry declares no v1 model, so its import fails instead
(FastAPI then treats every model as a current one). A process that already loaded it keeps it.
"""

import sys

sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]
