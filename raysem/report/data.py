"""Read a study back from MLflow: its parent runs, one row per trial, the per-fact records and analyses.

The run layout read here:

- experiment name = study name; parent runs carry tag ``raysem.role=study``;
- one child run per trial with tags ``raysem.role=trial``, ``raysem.trial_key`` and
  ``mlflow.parentRunId``; params and metrics as listed in ``PARAM_TYPES`` / the trial
  aggregates; artifacts ``records/facts.parquet`` and optionally ``analysis/frobenius.json``
  and ``analysis/features.npz``.

A resumed study may have logged a trial more than once: runs are deduplicated by trial key,
keeping the latest FINISHED run (or the latest run when none finished).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT

ROLE_TAG = "raysem.role"
KEY_TAG = "raysem.trial_key"
KIND_TAG = "raysem.study_kind"
PARENT_TAG = "mlflow.parentRunId"

RECORDS_ARTIFACT = "records/facts.parquet"
FROBENIUS_ARTIFACT = "analysis/frobenius.json"
FEATURES_ARTIFACT = "analysis/features.npz"

PARAM_TYPES: dict[str, type] = {
    "method": str,
    "rank": int,
    "lr": float,
    "steps": int,
    "gamma": float,
    "seed": int,
    "k": int,
    "sampling": int,
    "dataset": str,
    "model": str,
    "filter_mode": str,
    "filter_lambda": float,
    "filter_sigma": str,
    "replace": float,
    "mean_min": float,
    "mean_max": float,
    "study_kind": str,
    "group": str,
    "alpha": float,
    "dropout": float,
    "batch_size": int,
    "weight_decay": float,
    "optimizer": str,
    "prompt_style": str,
    "answer_budget": str,
    "phase": str,
    "fingerprint": str,
}
"""Trial params read back and the type each is parsed to (MLflow stores params as strings).

The first block is the run contract; the last line holds optional training settings that a
sweep may vary (absent ones read as NaN)."""

PARAM_DEFAULTS: dict[str, str] = {"filter_sigma": "variance"}
"""What a param reads as on trials logged before it existed: the value they ran with (σ was read as a
variance until ``filter_sigma`` became a setting), so that a study extended later is one configuration."""

DOWNLOAD_THREADS = 8
FEATURE_TRIALS_PER_MODEL = 50
"""Feature matrices are large (facts × hidden size); the PCA uses this many trials per model."""
TRIAL_METRICS = (
    "accuracy",
    "token_accuracy",
    "generality",
    "locality",
    "locality_soft",
    "portability",
    "deviation_rate",
    "rd_mean",
    "rd_undefined",
    "bad_case_rate",
    "deviation_among_bad",
    "empty_among_bad",
    "dist_mean",
    "dist_var",
    "dist_undefined",
    "n_facts",
    "empty_old",
    "retained_accuracy",
    "replaced_accuracy",
    "trained_accuracy",
    "n_retained",
    "n_replaced",
    "train_dist_mean",
    "train_dist_var",
    "empty_new",
    "wall_s",
    "tokens",
    "final_loss",
)
"""Trial metrics of the run contract; a trial that did not log one reads NaN."""


class ReportError(RuntimeError):
    """The experiment cannot be reported on (unknown, empty, unreachable)."""


@dataclass
class StudyData:
    """Everything the report reads from one experiment."""

    experiment: str
    experiment_id: str
    parents: list[Run]
    trials: pd.DataFrame
    """One row per trial key: run_id, trial_key, status, failed, start_time, the params, the metrics."""
    records: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Per-fact records of the trials that did not fail, with the trial's run_id and params joined."""
    frobenius: pd.DataFrame = field(default_factory=pd.DataFrame)
    """One row per trial with a Frobenius analysis: run_id, layer, rank, the norms, amplification."""
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """run_id -> {"features": n×d, "dist_old": n, "fact_ids": n}, for at most
    ``FEATURE_TRIALS_PER_MODEL`` trials per model (the first by trial key)."""
    duplicates: int = 0
    """Runs dropped because a later run of the same trial key replaced them."""
    missing_records: list[str] = field(default_factory=list)
    """Trial keys of successful trials whose per-fact table could not be read."""

    @property
    def ok(self) -> pd.DataFrame:
        """Trials that finished without failing."""
        return self.trials[~self.trials["failed"]]


def _parse(value: str | None, kind: type) -> Any:
    """A param string as ``kind``; a missing or logged ``None`` value is None (text) or NaN (numbers)."""
    if value is None or value in ("", "None") or (kind is not str and value.lower() in ("nan", "none", "null")):
        return math.nan if kind is not str else None
    if kind is int:
        return int(float(value))
    return kind(value)


def _search_all(client: MlflowClient, experiment_id: str, role: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = '{role}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=SEARCH_MAX_RESULTS_DEFAULT,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _latest_per_key(runs: list[Run]) -> tuple[list[Run], int]:
    """Latest FINISHED run per trial key (latest of any status when none finished)."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.data.tags.get(KEY_TAG, run.info.run_id), []).append(run)
    kept = []
    for group in by_key.values():
        finished = [r for r in group if r.info.status == "FINISHED"]
        kept.append(max(finished or group, key=lambda r: (r.info.start_time or 0, r.info.run_id)))
    return kept, len(runs) - len(kept)


def _trial_row(run: Run) -> dict[str, Any]:
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "trial_key": tags.get(KEY_TAG, run.info.run_id),
        "parent_run_id": tags.get(PARENT_TAG),
        "status": run.info.status,
        "start_time": run.info.start_time,
    }
    for name, kind in PARAM_TYPES.items():
        row[name] = _parse(params.get(name), kind)
    for name, value in metrics.items():
        row.setdefault(name, value)
    failed = metrics.get("failed", 0.0)
    row["failed"] = bool(run.info.status != "FINISHED" or (not math.isnan(failed) and failed > 0))
    return row


def trial_table(runs: list[Run]) -> pd.DataFrame:
    """Trial runs as one typed row each (params parsed, metrics as floats)."""
    frame = pd.DataFrame([_trial_row(r) for r in runs])
    for name in TRIAL_METRICS:
        if name not in frame:
            frame[name] = np.nan
    for name, kind in PARAM_TYPES.items():
        if kind is str:
            frame[name] = frame[name].astype(object)
        else:
            frame[name] = pd.to_numeric(frame[name], errors="coerce")
    for name, default in PARAM_DEFAULTS.items():
        frame[name] = frame[name].fillna(default)
    check_identities(frame)
    return frame.sort_values("trial_key", kind="stable").reset_index(drop=True)


def check_identities(trials: pd.DataFrame) -> None:
    """Refuse trials of different study identities (``fingerprint``) under one configuration label (swept
    point and set size): the report would pool them as one configuration's. Trials logged before identities
    were recorded have none and are not compared."""
    known = trials[~trials["fingerprint"].fillna("none").astype(str).isin(["", "none"])]
    counts = known.groupby(["group", "k"], dropna=False)["fingerprint"].unique()
    mixed = {label: sorted(prints) for label, prints in counts.items() if len(prints) > 1}
    if mixed:
        shown = "; ".join(f"{group} (k = {k}): {', '.join(prints)}" for (group, k), prints in list(mixed.items())[:5])
        raise ReportError(
            f"trials of different study identities share a configuration label, and would be pooled: {shown}. "
            "Report each study's experiment apart (a changed spec belongs under a new study name)."
        )


def _fetch(client: MlflowClient, run_id: str, path: str, dst: Path, reader: Callable[[Path], Any]) -> Any:
    """Download one artifact of a run and read it; None when the run does not have it."""
    target = dst / run_id
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, path, str(target))
    except (MlflowException, OSError):
        return None
    return reader(Path(local))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _analysis_files(client: MlflowClient, run_id: str) -> set[str]:
    try:
        return {f.path for f in client.list_artifacts(run_id, "analysis")}
    except (MlflowException, OSError):
        return set()


JOINED_PARAMS = ("dataset", "model", "method", "k", "gamma", "filter_mode", "replace", "sampling", "seed", "group")


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """Hide MLflow's per-file download progress bars (thousands of small files) unless asked for."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    if before is None:
        os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def _load_artifacts(client: MlflowClient, data: StudyData) -> None:
    ok = data.ok
    if ok.empty:
        return
    run_ids = list(ok["run_id"])
    with (
        _quiet_downloads(),
        tempfile.TemporaryDirectory(prefix="raysem-report-") as tmp,
        ThreadPoolExecutor(DOWNLOAD_THREADS) as pool,
    ):
        dst = Path(tmp)
        listings = dict(zip(run_ids, pool.map(lambda r: _analysis_files(client, r), run_ids)))
        tables = list(pool.map(lambda r: _fetch(client, r, RECORDS_ARTIFACT, dst, pd.read_parquet), run_ids))
        frob_ids = [r for r in run_ids if FROBENIUS_ARTIFACT in listings[r]]
        frobs = pool.map(
            lambda r: _fetch(client, r, FROBENIUS_ARTIFACT, dst, lambda p: json.loads(p.read_text())), frob_ids
        )
        with_features = ok[ok["run_id"].map(lambda r: FEATURES_ARTIFACT in listings[r])]
        feat_ids = list(
            with_features.groupby("model", dropna=False, sort=False).head(FEATURE_TRIALS_PER_MODEL)["run_id"]
        )
        feats = pool.map(lambda r: _fetch(client, r, FEATURES_ARTIFACT, dst, _read_npz), feat_ids)
        frob_rows = [{"run_id": r, **f} for r, f in zip(frob_ids, frobs) if f is not None]
        data.features = {r: f for r, f in zip(feat_ids, feats) if f is not None}

    if frob_rows:
        frame = pd.DataFrame(frob_rows)
        data.frobenius = frame.merge(ok[["run_id", "model", "method", "dist_mean"]], on="run_id", how="left")

    parts = []
    for (_, trial), table in zip(ok.iterrows(), tables):
        if table is None:
            data.missing_records.append(trial["trial_key"])
            continue
        table = table.copy()
        table["run_id"] = trial["run_id"]
        for name in JOINED_PARAMS:
            table[name] = trial[name]
        parts.append(table)
    if parts:
        records = pd.concat(parts, ignore_index=True)
        for name in ("exact_match", "dist_old", "dist_new", "rd", "generality", "locality", "token_accuracy"):
            if name in records:
                records[name] = pd.to_numeric(records[name], errors="coerce")
        for name in ("deviation", "bad_case", "y_new_empty"):
            if name in records:
                records[name] = records[name].astype(bool)
        data.records = records


def open_client(tracking_uri: str | None) -> MlflowClient:
    """A client for the given tracking URI (MLflow's own default when None)."""
    return MlflowClient(tracking_uri=tracking_uri)


def load_study(client: MlflowClient, experiment: str, with_artifacts: bool = True) -> StudyData:
    """Read one experiment; ``with_artifacts=False`` reads the trial rows only (params and metrics)."""
    try:
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as exc:
        raise ReportError(f"cannot read experiment {experiment!r} from {client.tracking_uri}: {exc}") from exc
    if exp is None:
        known = sorted(e.name for e in client.search_experiments(max_results=50))
        hint = f"; experiments there: {', '.join(known)}" if known else "; that store has no experiments"
        raise ReportError(f"no experiment named {experiment!r} at {client.tracking_uri}{hint}")
    trial_runs = _search_all(client, exp.experiment_id, "trial")
    if not trial_runs:
        raise ReportError(
            f"experiment {experiment!r} has no trial runs (runs tagged {ROLE_TAG}=trial); "
            "was the study started and did any trial finish?"
        )
    kept, duplicates = _latest_per_key(trial_runs)
    parents = sorted(_search_all(client, exp.experiment_id, "study"), key=lambda r: r.info.start_time or 0)
    data = StudyData(experiment, exp.experiment_id, parents, trial_table(kept), duplicates=duplicates)
    if with_artifacts:
        _load_artifacts(client, data)
    return data
