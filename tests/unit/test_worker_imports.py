"""What a worker loads: every module it imports is memory in every Ferry process (the supervisor
loads them before forking the workers, app/supervisor.py), so what only some set-ups or requests
use stays out until they use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Modules a local server at its defaults must not load: a bucket's client and Ferry's side of it,
# and pydantic's v1 package (~8 MiB, which FastAPI imports only to reject v1 models).
NOT_LOADED = (
    "pydantic.v1",
    "obstore",
    "boto3",
    "botocore",
    "jinja2",
    "app.storage.s3",
    "app.storage.s3_http",
    "app.storage.bucket_index",
    "app.routes.bucket_files",
    "app.routes.bucket_writes",
)

_WORKER = """
import json, sys
from app.main import create_app
from app.settings import Settings
from app.supervisor import preload

preload()
create_app(Settings(root=sys.argv[1], index_path=sys.argv[2]))
print(json.dumps(sorted(name for name, module in sys.modules.items() if module is not None)))
"""


def test_a_local_worker_loads_no_bucket_client_and_no_pydantic_v1(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _WORKER, str(root), str(tmp_path / "index.sqlite3")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # no config/ferry.env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "app.main" in loaded and "fastapi" in loaded  # the worker was built
    assert sorted(loaded.intersection(NOT_LOADED)) == []
