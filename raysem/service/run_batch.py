"""Many finished MLflow runs at once: one SQL transaction for a SQL store, a thread pool for a server.

MLflow's API creates one run per call, and each call is several statements (create, log, terminate)
and commits. A study logs thousands of runs that are complete when they are logged, so against a SQL
store (``sqlite:///``, ``postgresql://``, ``mysql://``) a batch is written in one transaction through
MLflow's own store and table models: every run appears FINISHED (or FAILED) with its tags, params,
metrics and artifacts, or none does. Against a server (``http(s)://``), whose REST API has no batch
run creation, the runs go through ``MlflowClient`` on a small pool of threads.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from raysem.service.sqlite_store import artifact_location

SQL_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")
HTTP_POOL = 8
"""Threads that log to a tracking server at once (the server's default is 4 worker processes)."""


@dataclass
class RunBatchItem:
    """One finished run: what it holds and which local files it carries as artifacts."""

    experiment: str
    run_name: str
    tags: dict[str, str]
    params: list[Param]
    metrics: list[Metric]
    status: str = "FINISHED"
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    """(local file, artifact folder) pairs."""


def is_sql_store(uri: str) -> bool:
    return uri.startswith(SQL_SCHEMES)


def log_runs(uri: str, items: list[RunBatchItem], on_logged: Callable[[int, str], None] | None = None) -> list[str]:
    """Log ``items`` as finished runs; returns their run ids in order and calls ``on_logged(index,
    run_id)`` as each is stored. All or nothing for a SQL store; for a server, runs logged before a
    failure stay logged (and have had ``on_logged``) and the first error is raised."""
    if not items:
        return []
    done = on_logged or (lambda index, run_id: None)
    if is_sql_store(uri):
        run_ids = _log_runs_sql(uri, items)
        for index, run_id in enumerate(run_ids):
            done(index, run_id)
        return run_ids

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_ids = {
        name: experiment_of(client, name, uri).experiment_id for name in {item.experiment for item in items}
    }

    def one(index: int) -> str:
        run_id = log_run(uri, items[index], experiment_ids[items[index].experiment])
        done(index, run_id)
        return run_id

    with ThreadPoolExecutor(min(HTTP_POOL, len(items))) as pool:
        return list(pool.map(one, range(len(items))))


def log_run(uri: str, item: RunBatchItem, experiment_id: str | None = None) -> str:
    """One run through ``MlflowClient``: create it with its tags, log params and metrics in one batch,
    upload its artifacts, mark it terminated (KILLED if a step failed). The artifacts go straight to the
    run's artifact location (``client.log_artifact`` would first fetch the run to learn it)."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = MlflowClient(tracking_uri=uri)
    experiment_id = experiment_id or experiment_of(client, item.experiment, uri).experiment_id
    info = client.create_run(experiment_id, run_name=item.run_name, tags=item.tags).info
    run_id = info.run_id
    try:
        client.log_batch(run_id, metrics=item.metrics, params=item.params)
        if item.artifacts:
            repo = get_artifact_repository(info.artifact_uri, tracking_uri=uri)
            for local, folder in item.artifacts:
                repo.log_artifact(local, folder)
    except Exception:
        client.set_terminated(run_id, status="KILLED")
        raise
    client.set_terminated(run_id, status=item.status)
    return run_id


def _log_runs_sql(uri: str, items: list[RunBatchItem]) -> list[str]:
    from mlflow.entities import RunStatus
    from mlflow.entities.lifecycle_stage import LifecycleStage
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.tracking._tracking_service.utils import _get_store
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_batch_log_data

    store = _get_store(uri)
    experiments = {name: experiment_of(store, name, uri) for name in {item.experiment for item in items}}
    now = int(time.time() * 1000)
    runs: list[Any] = []
    tags: list[Any] = []
    params: list[Any] = []
    metrics: list[Any] = []
    latest: list[Any] = []
    run_ids: list[str] = []
    for item in items:
        RunStatus.from_string(item.status)
        run_tags = [RunTag(k, str(v)) for k, v in {**item.tags, MLFLOW_RUN_NAME: item.run_name}.items()]
        _validate_batch_log_data(item.metrics, item.params, run_tags)
        experiment = experiments[item.experiment]
        run_id = uuid.uuid4().hex
        artifact_uri = append_to_uri_path(experiment.artifact_location, run_id, store.ARTIFACTS_FOLDER_NAME)
        if item.artifacts:
            repo = get_artifact_repository(artifact_uri)
            for local, folder in item.artifacts:
                repo.log_artifact(local, folder)
        runs.append(
            dict(
                run_uuid=run_id,
                name=item.run_name,
                source_type="UNKNOWN",
                source_name="",
                entry_point_name="",
                user_id=item.tags.get("mlflow.user", "unknown"),
                status=item.status,
                start_time=now,
                end_time=now,
                deleted_time=None,
                source_version="",
                lifecycle_stage=LifecycleStage.ACTIVE,
                artifact_uri=artifact_uri,
                experiment_id=int(experiment.experiment_id),
            )
        )
        tags += [dict(run_uuid=run_id, key=t.key, value=t.value) for t in run_tags]
        params += [dict(run_uuid=run_id, key=p.key, value=p.value) for p in item.params]
        newest: dict[str, dict] = {}
        for m in dict.fromkeys(item.metrics):
            is_nan, value = store.sanitize_metric_value(m.value)
            row = dict(run_uuid=run_id, key=m.key, value=value, timestamp=m.timestamp, step=m.step, is_nan=is_nan)
            metrics.append(row)
            held = newest.get(m.key)
            if held is None or (m.step, m.timestamp, value) > (held["step"], held["timestamp"], held["value"]):
                newest[m.key] = row
        latest += newest.values()
        run_ids.append(run_id)
    with store.ManagedSessionMaker(read_only=False) as session:
        for model, rows in (
            (SqlRun, runs),
            (SqlTag, tags),
            (SqlParam, params),
            (SqlMetric, metrics),
            (SqlLatestMetric, latest),
        ):
            if rows:
                session.execute(model.__table__.insert(), rows)
    return run_ids


def experiment_of(store, name: str, uri: str):
    """The experiment called ``name`` (created when missing) from the MLflow store or client of ``uri``."""
    experiment = store.get_experiment_by_name(name)
    if experiment is None:
        experiment = store.get_experiment(store.create_experiment(name, artifact_location=artifact_location(uri, name)))
    return experiment
