"""``raysem bench chaos``: a study under faults logs every trial exactly once.

A study of single-fact (packed) and 3-fact (unpacked) LoRA trials on a tiny random Llama logs to a
real ``mlflow server`` (SQLite backend) while Tune workers are SIGKILLed every ``kill_every``
seconds (never twice without a trial logged in between), the server is restarted once (at a third of the trials), and the driver is SIGKILLed once
(at two thirds) and the study resumed with ``--resume``. Then every trial run is read back through
``MlflowClient``: each expected trial must have exactly one FINISHED run, and no run may be left
RUNNING; and the killed driver's local Ray, which lingers, must have been stopped by the resumed one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from raysem.service import tracking
from raysem.service.identity import fingerprint, study_identity
from raysem.service.local_ray import RAY_ROOT, processes_of, reap_orphaned_rays
from raysem.service.mlflow_server import launch_server, start_server, wait_for_server
from raysem.service.planning import expand_units, trial_key
from raysem.service.spec import load_spec

PROGRESS = re.compile(r"\[raysem\] trials (\d+)/(\d+)")


def chaos_spec(
    folder: Path, model_dir: Path, uri: str, trials: int, unpacked_share: float = 0.1, pack_size: int = 64
) -> Path:
    """A study spec with exactly ``trials`` (even) trials: γ ∈ {0, 1} over packed single facts and, for
    ``unpacked_share`` of them, unpacked 3-fact sets (a Tune trial each); Tune retries a killed unit forever."""
    if trials < 4 or trials % 2:
        raise ValueError(f"trials must be an even number >= 4, got {trials}")
    unpacked = max(1, round(trials * unpacked_share / 2))
    data = {
        "name": "chaos",
        "kind": "sweep",
        "model": str(model_dir),
        "dataset": "worldfacts",
        "data_limit": 200,
        "sampling": {"k": 1, "n_samplings": trials // 2 - unpacked, "per_k": {3: unpacked}, "seed": 0},
        "trial": {"method": "lora", "steps": 2, "lr": 1e-3},
        "sweep": {"k": {"grid": [1, 3]}, "gamma": {"grid": [0.0, 1.0]}},
        "pack_size": pack_size,
        "resources": {"cpu": 1},
        "max_concurrent": 2,
        "failure": {"max_failures": -1},
        "tracking": {"uri": uri},
        "storage_path": str(folder / "ray"),
        "report": False,
    }
    path = folder / "chaos.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def expected_keys(spec_path: Path) -> set[str]:
    from raysem.data.datasets import load_facts

    spec = load_spec(spec_path)
    fp = fingerprint(study_identity(spec, load_facts(spec.dataset, limit=spec.data_limit).sha256))
    return {
        trial_key(u["point"], s, int(u["point"].get("k", spec.sampling.k)), fp)
        for u in expand_units(spec)
        for s in u["samplings"]
    }


class _Driver:
    """The study's driver process, its log, and the Tune workers of its local Ray."""

    def __init__(self, spec_path: Path, log: Path, resume: bool):
        command = [
            sys.executable,
            "-c",
            "import sys; from raysem.service.job import job_main; sys.exit(job_main(None, sys.argv[1:]))",
            "--spec",
            str(spec_path),
            *(["--resume"] if resume else []),
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.log, self.resumed = log, resume
        self.process = subprocess.Popen(
            command, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def trials_done(self) -> int:
        found = PROGRESS.findall(self.log.read_text(errors="replace")) if self.log.exists() else []
        return int(found[-1][0]) if found else 0

    def kill_a_worker(self) -> bool:
        for proc in processes_of(RAY_ROOT / str(self.process.pid)):
            try:
                if proc.cmdline() and proc.cmdline()[0].startswith("ray::ImplicitFunc"):
                    proc.kill()
                    return True
            except Exception:
                continue
        return False


def run_chaos(
    trials: int = 10_000,
    kill_every: float = 20.0,
    folder: Path | None = None,
    timeout: float = 6 * 3600,
    unpacked_share: float = 0.1,
    pack_size: int = 64,
    max_worker_kills: int | None = None,
    progress: Callable[[str], None] | None = None,
    server_workers: int = 4,
    server_down_s: float = 5.0,
) -> dict[str, Any]:
    """Run the study under faults and count its MLflow runs; one JSON-able dict (``ok`` when exact).
    ``max_worker_kills`` caps the Tune worker kills (None: one every ``kill_every`` seconds to the end); the
    server (``server_workers`` workers) stays down ``server_down_s`` seconds plus its start-up."""
    say = progress or (lambda message: None)
    root = Path(folder or tempfile.mkdtemp(prefix="raysem-chaos-"))
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    from raysem.models.loader import pull_model
    from raysem.models.tiny import tiny_llama

    model = tiny_llama(root / "model", AutoTokenizer.from_pretrained(pull_model()))
    server, uri = start_server(root / "mlflow", workers=server_workers)
    spec_path = chaos_spec(root, model, uri, trials, unpacked_share, pack_size)
    faults = {"worker_kills": 0, "server_restarts": 0, "driver_kills": 0, "orphaned_ray_processes": 0}
    started = time.time()
    driver = _Driver(spec_path, root / "driver.log", resume=False)
    orphan: Path | None = None
    last_kill, done_at_kill = time.time(), 0
    try:
        while True:
            if driver.process.poll() is not None:
                if faults["driver_kills"] == 1 and not driver.resumed:
                    say("resuming the study (--resume)")
                    driver = _Driver(spec_path, root / "driver.log", resume=True)
                    done_at_kill = 0
                    continue
                break
            if time.time() - started > timeout:
                raise TimeoutError(f"the chaos study did not finish within {timeout:.0f} s; see {root / 'driver.log'}")
            time.sleep(1.0)
            done = driver.trials_done()
            # never twice without a trial logged in between: a unit slower than kill_every still ends
            may_kill = max_worker_kills is None or faults["worker_kills"] < max_worker_kills
            if may_kill and time.time() - last_kill >= kill_every and done > done_at_kill and driver.kill_a_worker():
                faults["worker_kills"] += 1
                last_kill, done_at_kill = time.time(), done
                say(f"{done}/{trials} trials: SIGKILLed a Tune worker ({faults['worker_kills']} so far)")
            if not faults["server_restarts"] and done >= trials / 3:
                say(f"{done}/{trials} trials: restarting the mlflow server")
                server.terminate()
                server.wait(timeout=60)
                time.sleep(server_down_s)
                server, _ = launch_server(
                    root / "mlflow", workers=server_workers, port=int(uri.rsplit(":", 1)[1])
                )  # up in seconds; the study goes on meanwhile
                faults["server_restarts"] = 1
            if not faults["driver_kills"] and not driver.resumed and done >= 2 * trials / 3:
                say(f"{done}/{trials} trials: SIGKILLing the driver")
                driver.process.kill()
                driver.process.wait()
                faults["driver_kills"] = 1
                orphan = RAY_ROOT / str(driver.process.pid)  # its local Ray lingers until the resumed driver starts
                time.sleep(2.0)
                faults["orphaned_ray_processes"] = len(processes_of(orphan))
        wall = time.time() - started
        wait_for_server(server, uri, root / "mlflow")  # the restarted one may still be starting
        if driver.process.returncode != 0:
            tail = "".join(driver.log.read_text(errors="replace").splitlines(keepends=True)[-5:])
            raise RuntimeError(
                f"the study's driver exited with {driver.process.returncode}; the end of {driver.log}:\n{tail}"
            )
        runs = tracking.search_trial_runs(uri, "chaos")
        left = len(processes_of(orphan)) if orphan is not None else 0
    finally:
        if driver.process.poll() is None:  # an error above: leave nothing running
            driver.process.kill()
            driver.process.wait()
        reap_orphaned_rays()
        server.terminate()
        server.wait(timeout=60)
    by_status: dict[str, int] = {}
    for run in runs:
        by_status[run.info.status] = by_status.get(run.info.status, 0) + 1
    finished = [run.data.tags[tracking.KEY] for run in runs if run.info.status == "FINISHED"]
    expected = expected_keys(spec_path)
    out = {
        "trials": trials,
        "wall_s": wall,
        "trials_per_s": trials / wall,
        **faults,
        "finished_distinct": len(set(finished) & expected),
        "duplicates": len(finished) - len(set(finished)),
        "lost": len(expected - set(finished)),
        "unexpected": len(set(finished) - expected),
        "running": by_status.get("RUNNING", 0),
        "runs_by_status": by_status,
        "orphaned_ray_processes_left": left,
        "folder": str(root),
    }
    out["ok"] = out["finished_distinct"] == trials and not (
        out["duplicates"] or out["lost"] or out["unexpected"] or out["running"] or left
    )
    return out
