"""The local Ray a study starts when it is given no cluster, and cleaning up after a killed driver.

A local Ray outlives a driver killed with SIGKILL: its dashboard, runtime-env agent and workers keep
running. Each local Ray raysem starts therefore lives under ``<tmp>/raysem-ray/<driver pid>``; the next
start (or ``raysem cleanup``) stops the processes of every such Ray whose driver is gone, and nothing
else: not a Ray that someone else started, not another raysem driver's live one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psutil

RAY_ROOT = Path(tempfile.gettempdir()) / "raysem-ray"


def init_local_ray(**kwargs) -> Path:
    """``ray.init`` a new local Ray in ``RAY_ROOT/<this pid>`` after reaping orphaned ones (never a ``ray start``
    cluster that happens to run on this machine: ``RAY_ADDRESS`` or ``--address`` name those); returns its temp dir."""
    import ray

    reap_orphaned_rays()
    temp_dir = RAY_ROOT / str(os.getpid())
    ray.init(**{"address": "local", **kwargs}, _temp_dir=str(temp_dir))
    return temp_dir


def processes_of(temp_dir: str | Path) -> list[psutil.Process]:
    """The processes of the Ray started in ``temp_dir``: those whose command line names it, or which hold a
    file open under it (Ray's agents and workers rename themselves, ``ray::DashboardAgent``, but keep their
    logs in ``<temp_dir>/session_*/logs`` open)."""
    folder = str(temp_dir).rstrip(os.sep)
    inside = folder + os.sep  # so that .../raysem-ray/12 does not match .../raysem-ray/123

    def names(text: str) -> bool:
        return inside in text or text == folder or text.endswith("=" + folder)

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            if any(names(arg) for arg in proc.info["cmdline"] or ()) or any(
                inside in f.path for f in proc.open_files()
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_processes_of(temp_dir: str | Path, grace: float = 5.0) -> int:
    """End the processes of the Ray started in ``temp_dir`` (:func:`processes_of`): SIGTERM, then SIGKILL
    after ``grace`` seconds. Returns how many there were. Ray's GCS server and autoscaler monitor outlive a
    SIGTERM once the raylet is gone, so a long grace only delays their SIGKILL."""
    mine = processes_of(temp_dir)
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    return len(mine)


def reap_orphaned_rays(grace: float = 5.0) -> dict[int, int]:
    """Stop the local Rays raysem started whose driver process is gone; returns {driver pid: processes stopped}."""
    if not RAY_ROOT.is_dir():
        return {}
    reaped = {}
    for folder in sorted(RAY_ROOT.iterdir()):
        if folder.name.isdigit() and not psutil.pid_exists(int(folder.name)):
            reaped[int(folder.name)] = stop_processes_of(folder, grace)
            shutil.rmtree(folder, ignore_errors=True)
    return reaped
