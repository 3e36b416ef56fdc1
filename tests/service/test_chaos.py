"""Exactly once under faults: a 30-trial study (27 packed in packs of 6, 3 unpacked) with each fault once: a Tune worker killed,
the mlflow server restarted, the driver killed and resumed (``raysem bench chaos`` scaled down). The killed
driver's local Ray lingers and the resumed driver stops it, and nothing else; ``raysem cleanup`` does the same."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from raysem.bench.chaos import run_chaos
from raysem.service.local_ray import RAY_ROOT, processes_of


def decoy(folder) -> subprocess.Popen:
    """A process that names ``folder`` on its command line, as a local Ray's processes do."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", str(folder)])


def orphaned_decoy(folder) -> psutil.Process:
    """``decoy``, left by a parent that has exited (as a killed driver leaves its Ray), so that init reaps it."""
    folder.mkdir(parents=True, exist_ok=True)
    script = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)', {str(folder)!r}])"
    subprocess.run([sys.executable, "-c", script], check=True)
    found = processes_of(folder)
    assert len(found) == 1
    return found[0]


@pytest.mark.slow
def test_every_trial_logged_exactly_once_under_faults(tmp_path):
    live = RAY_ROOT / str(os.getpid())  # a live driver's Ray: the resumed driver's clean-up must leave it alone
    made = not live.exists()
    survivor = decoy(live)
    try:
        summary = run_chaos(
            trials=30,
            kill_every=5.0,
            folder=tmp_path,
            timeout=900,
            unpacked_share=0.1,
            pack_size=6,
            max_worker_kills=1,
            server_workers=1,
            server_down_s=1.0,
        )
        assert survivor.poll() is None and live.exists(), "a live driver's Ray was stopped"
    finally:
        survivor.kill()
        if made:
            live.rmdir()
    assert summary["worker_kills"] == 1 and summary["server_restarts"] == 1 and summary["driver_kills"] == 1, summary
    assert summary["orphaned_ray_processes"] > 0, (
        "a killed driver's Ray lingers (else the clean-up check proves nothing)"
    )
    assert summary["orphaned_ray_processes_left"] == 0, summary
    assert summary["finished_distinct"] == 30, summary
    assert (summary["duplicates"], summary["lost"], summary["unexpected"], summary["running"]) == (0, 0, 0, 0), summary
    assert summary["ok"]


def test_cleanup_stops_a_gone_drivers_ray_and_nothing_else(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan, live = RAY_ROOT / str(gone.pid), RAY_ROOT / str(os.getpid())
    made = not live.exists()
    orphaned, survivor, neighbour = orphaned_decoy(orphan), decoy(live), decoy(tmp_path / "12")
    try:
        assert processes_of(tmp_path / "1") == [] and [p.pid for p in processes_of(tmp_path / "12")] == [neighbour.pid]
        out = subprocess.run(
            [sys.executable, "-m", "raysem.cli.main", "cleanup"], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0 and f"driver {gone.pid} (gone): stopped 1 Ray processes" in out.stdout, (
            out.stdout + out.stderr
        )
        assert not orphaned.is_running() and not orphan.exists() and not processes_of(orphan)
        assert survivor.poll() is None and live.exists()
    finally:
        for process in (survivor, neighbour):
            process.kill()
        if orphaned.is_running():
            orphaned.kill()
        if made:
            live.rmdir()
