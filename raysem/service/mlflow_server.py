"""A real ``mlflow server`` on 127.0.0.1 with a SQLite backend and a local artifact store: started for the
benchmarks and the tests (a cluster's head runs its own, see cluster.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from raysem.ports import free_port


def launch_server(folder: Path, workers: int = 4, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start a real ``mlflow server`` on 127.0.0.1 (a free port unless given) with a SQLite backend, without
    waiting for it; returns it and its URI."""
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }  # MLflow's GenAI job runner: three busy processes raysem never uses
    return subprocess.Popen(
        command, stdout=open(folder / "server.log", "a"), stderr=subprocess.STDOUT, env=env
    ), f"http://127.0.0.1:{port}"


def start_server(folder: Path, workers: int = 4, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """``launch_server``, then ``wait_for_server``."""
    process, uri = launch_server(folder, workers, port)
    wait_for_server(process, uri, folder)
    return process, uri


def wait_for_server(process: subprocess.Popen, uri: str, folder: Path) -> None:
    """Wait (up to 120 s) until the server answers /health; kill it and raise if it does not."""
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"mlflow server did not start; see {folder / 'server.log'}")
