"""``raysem bench tracking``: trial runs per second into MLflow, the per-trial path against the batched one.

Each variant logs the same synthetic single-fact trials (one fact record, 21 loss steps, every
aggregate metric) the way a study does — kept on disk first, then logged — into a fresh store, and is
then checked through ``MlflowClient``: every trial has exactly one FINISHED run.

- ``per_trial``: one trial per call, each its own run through ``MlflowClient`` (health check, create,
  log batch, artifact upload, terminate): the path studies used before batching.
- ``batched``: ``TrialLogger.record`` with ``batch`` trials per call: one SQL transaction for a SQL
  store, a pool of client threads for a server.
Targets: a SQLite URI, and a real ``mlflow server`` on 127.0.0.1 with a SQLite backend. For the server,
``server_store`` also logs the batches straight into the SQLite store the server serves (how a study
logs at scale: the server then only serves the UI), and checks them through the server. And
``server_ceiling`` measures the server's own limit: the rate of its cheapest write request (``set_tag``
on one run, from the same pool of client threads); a run over REST takes at least three writes
(create, log batch, terminate), so a third of that rate bounds runs per second through the server.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from raysem.service import tracking
from raysem.service.mlflow_server import start_server
from raysem.service.run_batch import HTTP_POOL, experiment_of, log_run
from raysem.training.results import TrialResult, aggregate

LOSS_STEPS = 21


def synthetic_trials(n: int, prefix: str) -> list[tuple[str, dict[str, Any], TrialResult, None]]:
    """``n`` single-fact trial results shaped like a study's (one record, a loss curve, every aggregate)."""
    trials = []
    for i in range(n):
        record: dict[str, Any] = {
            "fact_id": f"f{i}",
            "prompt": f"Which city is q{i} in?",
            "target": "Paris",
            "y_old": "Lyon",
            "y_old_raw": "Lyon.",
            "y_new": "Paris",
            "y_new_raw": "Paris.",
            "exact_match": 1.0,
            "token_accuracy": 1.0,
            "generality": 1.0,
            "locality": 1.0,
            "locality_soft": 1.0,
            "portability": float("nan"),
            "dist_old": 0.4,
            "dist_new": 0.0,
            "deviation": False,
            "rd": 1.0,
            "bad_case": False,
            "y_new_empty": False,
        }
        key = f"{prefix}-{i:06d}"
        result = TrialResult(
            key,
            {},
            [record["fact_id"]],
            [record["fact_id"]],
            [record],
            {**aggregate([record]), "wall_s": 0.1},
            [1.0 / (step + 1) for step in range(LOSS_STEPS)],
        )
        params = {
            "k": 1,
            "gamma": 0.0,
            "method": "lora",
            "sampling": i,
            "seed": i,
            "lr": 0.001,
            "steps": LOSS_STEPS,
            "phase": "grid",
        }
        trials.append((key, params, result, None))
    return trials


def _per_trial(uri: str, experiment: str, pending: Path, trials: list) -> None:
    for key, params, result, error in trials:
        folder = tracking.PendingTrial(key, experiment, None, params, {}, result, error).write(pending)
        tracking.check_reachable(uri)
        log_run(uri, tracking.pending_run(folder))
        shutil.rmtree(folder)


def _batched(uri: str, experiment: str, pending: Path, trials: list, batch: int) -> None:
    logger = tracking.TrialLogger(uri, experiment, None, str(pending), {})
    for start in range(0, len(trials), batch):
        if not logger.record(trials[start : start + batch]):
            raise RuntimeError(f"trials {start}..{start + batch} were not logged to {uri}")


def _check(uri: str, experiment: str, n: int) -> None:
    runs = tracking.search_trial_runs(uri, experiment, "attributes.status = 'FINISHED'")
    keys = [run.data.tags[tracking.KEY] for run in runs]
    if len(keys) != n or len(set(keys)) != n:
        raise RuntimeError(
            f"{experiment}: expected {n} distinct finished trial runs, found {len(set(keys))} keys in {len(keys)} runs"
        )


def _write_requests_per_s(uri: str, experiment: str, n: int) -> float:
    """``n`` ``set_tag`` requests on one run from the server path's pool of client threads, per second."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(experiment_of(client, experiment, uri).experiment_id).info.run_id

    def write() -> None:
        with ThreadPoolExecutor(HTTP_POOL) as pool:
            list(pool.map(lambda i: client.set_tag(run_id, f"tag{i}", "x"), range(n)))

    seconds = _timed(write)
    if len(client.get_run(run_id).data.tags) < n:
        raise RuntimeError(f"{experiment}: {n} tags set, fewer read back")
    return n / seconds


def _timed(log: Callable[[], None]) -> float:
    started = time.perf_counter()
    log()
    return time.perf_counter() - started


def run_tracking_bench(
    trials: int = 1000, batch: int = 100, per_trial: int = 200, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Runs per second for each target and path (``per_trial`` trials for the slow path); one JSON-able dict."""
    say = progress or (lambda message: None)
    out: dict[str, Any] = {"trials": trials, "per_trial_trials": per_trial, "batch": batch}
    with tempfile.TemporaryDirectory(prefix="raysem-bench-tracking-") as tmp:
        root = Path(tmp)
        (root / "server").mkdir()
        server, server_uri = start_server(root / "server")
        try:
            targets = {
                "sqlite": (f"sqlite:///{root / 'mlflow.db'}", None),
                "server": (server_uri, None),
                "server_store": (f"sqlite:///{root / 'server' / 'mlflow.db'}", server_uri),
            }
            for name, (uri, read_uri) in targets.items():
                row: dict[str, Any] = {}
                if name != "server_store":
                    say(f"{name}: {per_trial} trials one per call")
                    slow = synthetic_trials(per_trial, "slow")
                    seconds = _timed(partial(_per_trial, uri, f"{name}-per-trial", root / name / "pending-slow", slow))
                    _check(read_uri or uri, f"{name}-per-trial", per_trial)
                    row["per_trial_runs_per_s"] = per_trial / seconds
                say(f"{name}: {trials} trials in batches of {batch}")
                fast = synthetic_trials(trials, "fast")
                seconds = _timed(partial(_batched, uri, f"{name}-batched", root / name / "pending", fast, batch))
                _check(read_uri or uri, f"{name}-batched", trials)
                row["runs_per_s"] = trials / seconds
                if "per_trial_runs_per_s" in row:
                    row["speedup"] = row["runs_per_s"] / row["per_trial_runs_per_s"]
                out[name] = row
            say(f"server: {trials} write requests (set_tag), the server's ceiling")
            ceiling = _write_requests_per_s(server_uri, "server-ceiling", trials)
            out["server_ceiling"] = {"write_requests_per_s": ceiling, "runs_per_s_bound": ceiling / 3}
        finally:
            server.terminate()
            server.wait(timeout=30)
    out["runs_per_s"] = out["sqlite"]["runs_per_s"]
    return out
