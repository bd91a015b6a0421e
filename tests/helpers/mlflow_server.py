"""A real ``mlflow server`` on loopback, backed by a fresh PostgreSQL database (for tests).

Used by the session fixture ``mlflow_pg_server`` in ``tests/conftest.py``. The database
(``prefrestore_test_<random>``) is created through psycopg2 on the local server (trust auth) and
dropped at teardown; artifacts go to a temporary folder. :func:`unavailable_reason` says why such
a server cannot be started here (then tests skip with that reason).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_USERS = ("postgres", "root")


def _connect(user: str, dbname: str = "postgres"):  # noqa: ANN202
    import psycopg2

    return psycopg2.connect(host=PG_HOST, port=PG_PORT, user=user, dbname=dbname, connect_timeout=3)


def pg_user() -> str | None:
    """A PostgreSQL role that can connect without a password, or None."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return None
    for user in PG_USERS:
        try:
            _connect(user).close()
            return user
        except Exception:
            continue
    return None


def unavailable_reason() -> str | None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    if pg_user() is None:
        return f"no PostgreSQL server accepting trust connections at {PG_HOST}:{PG_PORT} (users {PG_USERS})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout_s}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def pg_mlflow_server(workdir: Path, startup_timeout_s: float = 180.0) -> Iterator[str]:
    """Yield the tracking URI of a fresh PostgreSQL-backed ``mlflow server`` on 127.0.0.1."""
    user = pg_user()
    if user is None:
        raise RuntimeError(unavailable_reason() or "PostgreSQL unavailable")
    dbname = f"prefrestore_test_{secrets.token_hex(6)}"
    admin = _connect(user)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}"')
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "mlflow-server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"postgresql+psycopg2://{user}@{PG_HOST}:{PG_PORT}/{dbname}",
        "--artifacts-destination", (workdir / "artifacts").as_uri(), "--workers", "1",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(url, proc, log, startup_timeout_s)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
