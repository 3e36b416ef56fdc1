"""End to end: `ray job submit` of a study to a Ray head on 127.0.0.1, logging to a real `mlflow server`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from raysem.ports import free_port
from raysem.service.local_ray import stop_processes_of
from raysem.service.ray_auth import auth_env, ensure_token

from conftest import REPO_ROOT, start_mlflow_server

pytestmark = pytest.mark.slow


def test_token_file_is_private(tmp_path):
    path = ensure_token(tmp_path / "token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    assert first and ensure_token(path).read_text() == first


def test_ray_job_submit_logs_study_to_mlflow_server(tmp_path, tiny_model_dir):
    """The head runs in its own --temp-dir, and only its processes are stopped afterwards."""
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="raysem-ray-")  # short: Ray's socket paths must stay under 108 bytes
    bin_dir = Path(sys.executable).parent
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        **auth_env(ensure_token(tmp_path / "token")),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    mlflow_port, ray_port, dash_port, agent_port = free_port(), free_port(), free_port(), free_port()
    uri = f"http://127.0.0.1:{mlflow_port}"
    spec = tmp_path / "submitted.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "submitted",
                "kind": "reweight",
                "model": str(tiny_model_dir),
                "dataset": "worldfacts",
                "data_limit": 60,
                "sampling": {"k": 2, "n_samplings": 1, "seed": 0},
                "trial": {"method": "lora", "steps": 2},
                "sweep": {"gamma": {"grid": [0.0, 1.0]}},
                "resources": {"cpu": 1},
                "tracking": {"uri": uri},
                "storage_path": str(tmp_path / "ray"),
                "report": False,
            }
        )
    )
    server = start_mlflow_server(tmp_path / "mlflow", mlflow_port)
    ray = str(bin_dir / "ray")
    try:
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--port",
                str(ray_port),
                "--num-cpus",
                "2",
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dash_port),
                "--disable-usage-stats",
                "--dashboard-agent-listen-port",
                str(agent_port),  # not the default 52365: another Ray may hold it
                "--temp-dir",
                ray_tmp,
            ],
            env=env,
            check=True,
            timeout=180,
        )
        deadline = time.time() + 60
        while True:  # the head's job agent registers a little after `ray start` returns, later on a loaded machine
            submitted = subprocess.run(
                [
                    ray,
                    "job",
                    "submit",
                    "--address",
                    f"http://127.0.0.1:{dash_port}",
                    "--working-dir",
                    str(REPO_ROOT),
                    "--",
                    "python",
                    "jobs/reweight.py",
                    "--spec",
                    str(spec),
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if "No available agent to submit job" not in submitted.stderr or time.time() > deadline:
                break
            time.sleep(3)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert "succeeded" in submitted.stdout
    finally:
        assert stop_processes_of(ray_tmp) > 0
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("submitted")
        runs = client.search_runs([exp.experiment_id], filter_string="tags.`raysem.role` = 'trial'")
        assert len(runs) == 2
        assert sorted(r.data.params["gamma"] for r in runs) == ["0.0", "1.0"]
        for run in runs:
            assert run.info.status == "FINISHED"
            assert run.data.params["k"] == "2" and "accuracy" in run.data.metrics
            facts = pd.read_parquet(client.download_artifacts(run.info.run_id, "records/facts.parquet"))
            assert len(facts) == 2 and all(i.startswith("worldfacts:") for i in facts["fact_id"])
        parent = client.search_runs([exp.experiment_id], filter_string="tags.`raysem.role` = 'study'")
        assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    finally:
        server.terminate()
        server.wait(timeout=30)
