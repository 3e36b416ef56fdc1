"""MLflow tracking: a parent run per study, a child run per trial, and a local pending store.

Every trial result is first written to a pending folder on local storage, then logged to
MLflow; the folder is removed only once MLflow has the run. When the tracking server is
unreachable the folders stay, and ``raysem sync`` logs them later: nothing is lost.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import raysem
from raysem.service.run_batch import RunBatchItem, experiment_of, log_runs
from raysem.service.sqlite_store import PREFIX
from raysem.training.results import TrialResult

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one line per trial run otherwise

ROLE, KIND, KEY = "raysem.role", "raysem.study_kind", "raysem.trial_key"
PARENT = "mlflow.parentRunId"


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached."""


def absolute_uri(uri: str, base: Path | None = None) -> str:
    """Make a relative ``sqlite:///file.db`` absolute (workers do not share the driver's working folder)."""
    if uri.startswith(PREFIX) and not uri.startswith(PREFIX + "/"):
        return PREFIX + str(((base or Path.cwd()) / uri.removeprefix(PREFIX)).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise ``TrackingUnavailable`` with a clear message if the tracking URI cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingUnavailable(f"tracking server {uri} answered /health with HTTP {response.status}")
        except OSError as exc:
            raise TrackingUnavailable(f"tracking server {uri} is unreachable: {exc}") from None
    elif uri.startswith(PREFIX):
        folder = Path(uri.removeprefix(PREFIX)).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingUnavailable(f"tracking store {uri}: folder {folder} does not exist or is not writable")


def git_commit(folder: Path | None = None) -> str:
    """The current git commit of the working copy, or 'unknown' outside a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def start_study(uri: str, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Create the study's parent run and return its id (raises if MLflow is unreachable)."""
    client = _client(uri)
    run = client.create_run(
        experiment_of(client, experiment, uri).experiment_id, run_name=run_name, tags={ROLE: "study", **tags}
    )
    client.log_batch(run.info.run_id, params=_params(params))
    return run.info.run_id


def finish_study(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the study's parent run ended: FINISHED, or KILLED when its Tune run was interrupted."""
    _client(uri).set_terminated(run_id, status=status)


def reopen_study(uri: str, run_id: str) -> None:
    """Mark a resumed study's parent run RUNNING again."""
    _client(uri).update_run(run_id, status="RUNNING")


def study_identities(uri: str, experiment: str, param: str) -> list[tuple[str, str, str | None]]:
    """(run id, run name, the ``param`` recorded or None) of every study run of the experiment."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{ROLE}` = 'study'", max_results=5000)
    return [(r.info.run_id, r.info.run_name, r.data.params.get(param)) for r in runs]


def finished_trial_keys(uri: str, experiment: str) -> set[str]:
    """Trial keys that already have a FINISHED or FAILED child run in the experiment (not to be redone)."""
    return {
        run.data.tags[KEY]
        for run in search_trial_runs(uri, experiment, "attributes.status != 'RUNNING'")
        if KEY in run.data.tags and run.info.status in ("FINISHED", "FAILED")
    }


def close_orphaned_runs(uri: str, experiment: str) -> int:
    """Mark KILLED the experiment's trial runs left RUNNING by a logger that died mid-run (call it before
    the study's logger starts, when no other logger writes to the experiment); returns how many."""
    client = _client(uri)
    orphans = search_trial_runs(uri, experiment, "attributes.status = 'RUNNING'")
    for run in orphans:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(orphans)


def search_trial_runs(uri: str, experiment: str, condition: str | None = None) -> list:
    """The experiment's trial runs (those that meet an MLflow search ``condition``), every page."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{ROLE}` = 'trial'" + (f" and {condition}" if condition else ""),
            max_results=5000,
            page_token=token,
        )
        runs += page
        token = page.token
        if not token:
            return runs


def _params(params: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k, "" if v is None else str(v)[:6000]) for k, v in sorted(params.items())]


def _metrics(values: dict[str, float], loss_curve: list[float]) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = [Metric(k, float(v), now, 0) for k, v in sorted(values.items()) if v is not None and math.isfinite(float(v))]
    out += [Metric("train_loss", float(v), now, step) for step, v in enumerate(loss_curve) if math.isfinite(float(v))]
    return out


@dataclass(frozen=True)
class PendingTrial:
    """One trial's complete result, as it is kept on local disk before (and until) MLflow has it."""

    trial_key: str
    experiment: str
    parent_run_id: str | None
    params: dict[str, Any]
    tags: dict[str, str]
    result: TrialResult
    error: str | None = None

    @property
    def run_name(self) -> str:
        """A readable MLflow run name from the params, e.g. ``k=10 γ=1 lora s3`` (floats to 3 significant
        digits; the params keep every digit); the trial key when the params name no set size."""
        p = self.params
        if "k" not in p:
            return self.trial_key
        parts = [f"k={p['k']}", f"γ={float(p.get('gamma') or 0.0):.3g}"]
        if p.get("filter_mode", "none") not in (None, "none"):
            parts += [str(p["filter_mode"]), f"ρ={float(p['replace']):.3g}", f"λ={float(p['filter_lambda']):.3g}"]
        parts += [str(p.get("method", "")), f"s{p.get('sampling', 0)}"]
        return " ".join(x for x in parts if x)

    def write(self, pending_dir: Path) -> Path:
        """Write it (atomically) under ``pending_dir/<trial_key>``; returns that folder."""
        trial_key, result = self.trial_key, self.result
        pending_dir.mkdir(parents=True, exist_ok=True)
        target = pending_dir / trial_key
        tmp = Path(tempfile.mkdtemp(dir=pending_dir, prefix=f".{trial_key}-"))
        meta = {
            "trial_key": trial_key,
            "run_name": self.run_name,
            "experiment": self.experiment,
            "parent_run_id": self.parent_run_id,
            "params": self.params,
            "tags": self.tags,
            "metrics": result.aggregates,
            "loss_curve": result.loss_curve,
            "error": self.error,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, default=str))
        pq.write_table(pa.Table.from_pylist(result.records), tmp / "facts.parquet")
        frob = result.analysis.get("frobenius")
        if frob:
            (tmp / "frobenius.json").write_text(json.dumps(frob))
        features = result.analysis.get("features")
        if features is not None and len(features):
            dist = [r["dist_old"] for r in result.records]
            np.savez(
                tmp / "features.npz",
                features=np.asarray(features, dtype=np.float32),
                dist_old=np.asarray(dist),
                fact_ids=np.asarray([r["fact_id"] for r in result.records]),
            )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target


def pending_run(folder: Path) -> RunBatchItem:
    """The MLflow run a pending trial folder becomes."""
    meta = json.loads((folder / "meta.json").read_text())
    parent = meta.get("parent_run_id")
    tags = {ROLE: "trial", KEY: meta["trial_key"], **meta["tags"]}
    if parent:
        tags[PARENT] = parent
    if meta.get("error"):
        tags["raysem.error"] = meta["error"][:5000]
    artifacts = [(str(folder / "facts.parquet"), "records")]
    artifacts += [
        (str(folder / name), "analysis") for name in ("frobenius.json", "features.npz") if (folder / name).exists()
    ]
    return RunBatchItem(
        experiment=meta["experiment"],
        run_name=meta.get("run_name") or meta["trial_key"],
        tags=tags,
        params=_params(meta["params"]),
        metrics=_metrics(meta["metrics"], meta["loss_curve"]),
        status="FAILED" if meta.get("error") else "FINISHED",
        artifacts=artifacts,
    )


def log_pending(uri: str, folders: list[Path]) -> list[str]:
    """Log pending trial folders as MLflow child runs (one transaction for a SQL store), then remove
    the folders; returns the run ids."""
    return log_runs(
        uri, [pending_run(folder) for folder in folders], on_logged=lambda index, _: shutil.rmtree(folders[index])
    )


def record_trials(uri: str, folders: list[Path]) -> bool:
    """Log trials kept by ``PendingTrial.write``; True once all are in MLflow. On failure the rest stay
    on disk for ``raysem sync``. Before a retry, trials that MLflow holds after all (a call that failed
    in flight may still have been applied) are dropped, so no trial is logged twice."""
    names = ", ".join(folder.name for folder in folders[:3]) + (
        f" and {len(folders) - 3} more" if len(folders) > 3 else ""
    )
    where = folders[0].parent
    try:
        check_reachable(uri)
    except TrackingUnavailable as exc:
        print(f"raysem: {exc}; trials {names} kept in {where}, run `raysem sync` later")
        return False
    experiment = json.loads((folders[0] / "meta.json").read_text())["experiment"]
    for attempt in range(3):
        try:
            if attempt:
                stored = finished_trial_keys(uri, experiment)
                for folder in folders:
                    if folder.exists() and folder.name in stored:
                        shutil.rmtree(folder)
            log_pending(uri, [folder for folder in folders if folder.exists()])
            return True
        except Exception as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
    print(f"raysem: could not log trials {names} to {uri} ({last}); kept in {where}, run `raysem sync` later")
    return False


def sync_pending(uri: str, pending_dir: Path, batch: int = 500) -> tuple[int, int, list[str]]:
    """Log every pending trial under ``pending_dir`` that MLflow does not already have; returns (logged,
    already logged, errors). A folder whose trial key already has a finished run (the run was logged
    but the process died before removing the folder) is removed, not logged twice."""
    check_reachable(uri)
    folders = sorted(p for p in pending_dir.glob("*") if p.is_dir() and not p.name.startswith("."))
    experiments = {folder: json.loads((folder / "meta.json").read_text())["experiment"] for folder in folders}
    done = {name: finished_trial_keys(uri, name) for name in set(experiments.values())}
    todo, already = [], 0
    for folder in folders:
        if folder.name in done[experiments[folder]]:
            shutil.rmtree(folder)
            already += 1
        else:
            todo.append(folder)
    logged, errors = 0, []
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        try:
            logged += len(log_pending(uri, chunk))
        except Exception as exc:
            errors.append(f"{chunk[0].name} … {chunk[-1].name} ({len(chunk)} trials): {exc}")
    return logged, already, errors


RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)
"""Seconds between attempts at a tracking read that must not be guessed (about 15 s in all)."""


def with_retries(read: Callable[[], Any], what: str) -> Any:
    """``read()``, retried after each of ``RETRY_DELAYS``; then ``TrackingUnavailable`` naming ``what``."""
    for delay in RETRY_DELAYS:
        try:
            return read()
        except Exception:
            time.sleep(delay)
    try:
        return read()
    except Exception as exc:
        raise TrackingUnavailable(f"{what} failed {len(RETRY_DELAYS) + 1} times: {exc}") from exc


def study_tags(kind: str, model: str, dataset_sha256: str, commit: str) -> dict[str, str]:
    return {
        KIND: kind,
        "raysem.version": raysem.__version__,
        "raysem.git_commit": commit,
        "raysem.model": model,
        "raysem.dataset_sha256": dataset_sha256,
    }


class TrialLogger:
    """Logs trials for a study from the driver's node (a Ray actor pinned there).

    Trials on any node hand their results to this actor, so the tracking server may stay bound
    to 127.0.0.1 on the head and the pending store lives on the head's disk; one actor also
    serialises writes to a SQLite store.
    """

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None, pending_dir: str, tags: dict[str, str]):
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.pending, self.tags = Path(pending_dir), tags
        self._done: set[str] | None = None
        self.recorded = 0
        """Trials handed to ``record`` by this logger: the ones run in this sitting of the study."""

    def done_among(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` already logged. The experiment's keys are read from MLflow once (with
        retries; a store that stays unreachable is an error, never "nothing done"), then kept as
        this logger records trials, so each call costs O(len(keys)). A trial kept on disk for a
        later log counts as done: it is never run twice."""
        if self._done is None:
            self._done = with_retries(
                lambda: finished_trial_keys(self.uri, self.experiment), f"reading finished trials from {self.uri}"
            )
        return [k for k in keys if k in self._done or (self.pending / k).is_dir()]

    def metric_of(self, keys: list[str], metric: str) -> list[float]:
        """``metric`` as logged by the finished run of each trial key (NaN where it has none): a unit that
        resumes with trials done reports their objective, not only that of the trials it runs."""

        def read() -> list[float]:
            values = []
            for key in keys:
                runs = search_trial_runs(
                    self.uri, self.experiment, f"tags.`{KEY}` = '{key}' and attributes.status = 'FINISHED'"
                )
                values.append(runs[0].data.metrics.get(metric, math.nan) if runs else math.nan)
            return values

        return with_retries(read, f"reading {metric} of finished trials from {self.uri}")

    def record(self, trials: list[tuple[str, dict[str, Any], TrialResult, str | None]]) -> bool:
        """Keep each (trial key, params, result, error) on this node's disk first, then log them in one
        batch with any trials kept from earlier calls (False: some stay kept, for a later call,
        ``flush`` or ``raysem sync``)."""
        for key, params, result, error in trials:
            PendingTrial(key, self.experiment, self.parent, params, self.tags, result, error).write(self.pending)
        self.recorded += len(trials)
        return self._log_kept()

    def recorded_count(self) -> int:
        """``recorded``, for the driver (an actor's attributes are not remote)."""
        return self.recorded

    def flush(self, timeout: float = 120.0) -> int:
        """Retry the kept trials until they are logged or ``timeout`` seconds pass; returns how many stay."""
        deadline = time.time() + timeout
        while not self._log_kept() and time.time() < deadline:
            time.sleep(5.0)
        return self.pending_count()

    def _log_kept(self) -> bool:
        folders = self._kept()
        if not folders:
            return True
        logged = record_trials(self.uri, folders)
        if self._done is not None:
            self._done.update(folder.name for folder in folders if not folder.exists())
        return logged

    def _kept(self) -> list[Path]:
        return (
            sorted(p for p in self.pending.glob("*") if p.is_dir() and not p.name.startswith("."))
            if self.pending.exists()
            else []
        )

    def pending_count(self) -> int:
        return len(self._kept())


def start_logger(uri: str, experiment: str, parent_run_id: str | None, pending_dir: Path, tags: dict[str, str]):
    """Start the study's ``TrialLogger`` actor on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)(TrialLogger)
    return actor.options(scheduling_strategy=here).remote(uri, experiment, parent_run_id, str(pending_dir), tags)
