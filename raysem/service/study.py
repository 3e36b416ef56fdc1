"""Running a study on Ray Tune (the driver): check the cluster and the study's identity, log the study run,
run the spec's units (a grid, or a search and its confirmation) as resumable Tune runs, and mark the
study run FINISHED. Planning lives in ``planning``, the worker side in ``unit``, the Tune runs in
``tuning``, stopping in ``interrupt``, the identity check in ``identity``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from raysem.data.facts import Fact, FactSet
from raysem.errors import SpecError
from raysem.models.catalog import ModelError
from raysem.models.device import planned_dtype
from raysem.service import tracking
from raysem.service.estimate import TABLE_BATCH, check_fit
from raysem.service.identity import IDENTITY_PARAM, resolve_identity, study_identity
from raysem.service.interrupt import BARRIER, StopOnSigint, StudyInterrupted, interrupt_at
from raysem.service.local_ray import init_local_ray
from raysem.service.planning import best_point, confirmation_units, count_trials, spec_params, study_facts
from raysem.service.spec import StudySpec
from raysem.service.storage import check_storage, cluster_hosts
from raysem.service.tuning import Progress, fit, make_tuner, param_space_of, tune_trial_count
from raysem.service.unit import StudyContext, _tune_trainable

# Tune's per-trial loggers and frequent experiment snapshots make the driver the bottleneck at thousands of trials.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "30")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# SIGINT is the study's (see StopOnSigint): Tune's own handler outlives tune.run and swallows a
# Ctrl-C that arrives between two Tune runs.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


class ResourceError(RuntimeError):
    """The Ray cluster cannot offer what a study's trials ask for."""


def check_model(spec: StudySpec) -> None:
    """Refuse, before any unit, a model raysem cannot run as the spec asks (``models.loader.check_model``)."""
    from raysem.models.loader import check_model as check

    try:
        check(spec.model, spec.prompt_style)
    except ModelError as exc:
        raise SpecError(f"model: {exc}") from None


def check_resources(spec: StudySpec) -> None:
    """Fail before any trial starts if no node can ever offer what a trial (or a DeepSpeed worker) asks for."""
    import ray

    if spec.resources.expect_autoscaling:
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    wanted = {"trial": spec.resources.bundle()}
    if spec.resources.full_ft_worker:
        wanted["DeepSpeed worker"] = spec.resources.full_ft_worker
    for what, bundle in wanted.items():
        if not any(all(node.get(r, 0) >= amount for r, amount in bundle.items()) for node in nodes):
            offered = [
                {r: v for r, v in node.items() if not r.startswith("node:") and "memory" not in r} for node in nodes
            ]
            raise ResourceError(
                f"no node of the Ray cluster can offer a {what}'s resources {bundle}; nodes offer {offered}. "
                "Change `resources` in the spec, or set resources.expect_autoscaling if an autoscaler adds such nodes."
            )


WHOLE_TABLE_FACTS = 256
"""A dataset of at most this many facts is tabled whole (once; every later study on it reads the cache)."""


def base_table(spec: StudySpec, factset: FactSet, needed: list[Fact]) -> pd.DataFrame:
    """The base records the units score against: the whole dataset's cached table when there is one (it
    covers every sampled fact), else the used facts' table. A missing table is computed as a Ray Data job
    on the units' own resources (their GPU share) and precision, so that the driver never loads the model:
    for the whole dataset when it is small (``WHOLE_TABLE_FACTS``), else for the used facts."""
    from raysem.semantics.tables import distance_table_ray, load_distance_table, table_path

    dtype = planned_dtype(spec.precision, gpu=spec.resources.gpu > 0)
    used = FactSet(factset.name, factset.format, needed, factset.sha256)
    for source in (factset, used):
        path = table_path(spec.model, source, spec.prompting, dtype)
        if path.is_file():
            return load_distance_table(path)
    source = factset if len(factset.facts) <= WHOLE_TABLE_FACTS else used
    actors = max(1, min(spec.max_concurrent, math.ceil(len(source.facts) / TABLE_BATCH)))
    bundle = spec.resources.bundle()
    print(f"raysem: base answers of {len(source.facts)} facts: a Ray Data job on {actors} x {bundle}")
    try:
        table, _ = distance_table_ray(
            spec.model,
            source,
            batch_size=TABLE_BATCH,
            actors=actors,
            prompting=spec.prompting,
            resources=bundle,
            dtype=dtype,
        )
    except Exception as exc:  # Ray Data wraps the actor's own error (a reserved GPU torch cannot see, ...)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "Error:" in line), lines[-1] if lines else repr(exc))
        raise ResourceError(f"the base-answer job on {bundle} failed: {reason}") from exc
    return table


@dataclass
class StudyOutcome:
    name: str
    experiment: str
    tracking_uri: str
    parent_run_id: str | None
    trials: int
    wall_s: float
    pending: int
    storage: Path
    best_point: dict[str, Any] | None = None
    """The searched point with the best objective (random / Optuna searches)."""
    ran: int = 0
    """Trials run in this sitting (``trials`` counts the whole study, resumed or not)."""


def run_study(
    spec: StudySpec, *, address: str | None = None, resume: bool = False, new_experiment: bool = False
) -> StudyOutcome:
    """Run (or resume) a study on the Ray cluster at ``address`` (local Ray when none), logging to MLflow;
    ``new_experiment`` runs a spec whose identity differs from its experiment's under a new name instead of refusing it."""
    import ray

    started = time.time()
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address or os.environ["RAY_ADDRESS"])
        else:
            init_local_ray()
    check_resources(spec)
    check_model(spec)
    check_fit(spec)
    check_storage(
        spec.storage_path,
        hosts=cluster_hosts(),
        autoscaling=spec.resources.expect_autoscaling,
        declared_shared=spec.storage_shared,
    )
    uri = tracking.absolute_uri(spec.tracking.uri)
    factset, needed = study_facts(spec)
    identity = study_identity(spec, factset.sha256)
    spec, fp = resolve_identity(spec, uri, identity, new_experiment)
    storage = Path(spec.storage_path).resolve()
    study_dir = storage / spec.name
    pending = storage / "pending" / spec.name
    table = base_table(spec, factset, needed)
    tags = tracking.study_tags(spec.kind, spec.model, factset.sha256, tracking.git_commit(Path(__file__).parent))

    parent_file = study_dir / "parent_run_id"
    parent_id: str | None = None
    try:
        tracking.check_reachable(uri)
        if resume and parent_file.exists():
            parent_id = parent_file.read_text().strip()
            tracking.reopen_study(uri, parent_id)
            tracking.close_orphaned_runs(uri, spec.experiment)
            if pending.exists():
                logged, already, errors = tracking.sync_pending(uri, pending)
                if logged or already or errors:
                    print(
                        f"raysem: trials kept by the interrupted run: {logged} logged now, {already} were in MLflow already"
                        + (f"; not logged: {errors}" if errors else "")
                    )
        else:
            params = {
                "spec": spec.model_dump_json(),
                "objective": spec.objective,
                **spec_params(spec),
                IDENTITY_PARAM: json.dumps(identity, sort_keys=True),
                "fingerprint": fp or "none",
            }
            parent_id = tracking.start_study(uri, spec.experiment, spec.name, tags, params)
            study_dir.mkdir(parents=True, exist_ok=True)
            parent_file.write_text(parent_id)
    except tracking.TrackingUnavailable as exc:
        print(f"raysem: {exc}. Trial results are kept in {pending}; run `raysem sync` once the server is back.")

    logger = tracking.start_logger(uri, spec.experiment, parent_id, pending, tags)
    context = StudyContext(
        spec.model_dump_json(), table, [f.to_dict() for f in factset.facts], logger, fp, os.environ.get(BARRIER)
    )
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trainable, context=context), resources=spec.resources.bundle()
    )
    total = count_trials(spec)
    progress = Progress(total)
    param_space, searcher, num_samples = param_space_of(spec)
    # Results live in MLflow and the pending store; with the per-trial loggers off, the ResultGrid
    # that fit() builds finds no result.json and would warn once per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    best = None
    status = "KILLED"
    try:
        with StopOnSigint() as stop:
            tuner = make_tuner(spec, trainable, study_dir, param_space, searcher, num_samples, progress, resume)
            results = fit(tuner, tune_trial_count(param_space, num_samples), stop)
            if spec.search.algorithm != "grid":
                best = best_point(spec, results)
                interrupt_at("search-end")
                if spec.search.confirm:
                    _confirm(spec, best, trainable, storage, progress, resume, stop)
            interrupt_at("end")
            if stop.received:
                raise StudyInterrupted(
                    "the study stopped (SIGINT) after its last phase, before it was marked "
                    "finished. Every trial is logged; rerun with --resume to finish it."
                )
        status = "FINISHED"
    finally:
        left = ray.get(logger.flush.remote())
        ran = ray.get(logger.recorded_count.remote())
        if parent_id:
            try:
                tracking.with_retries(
                    lambda: tracking.finish_study(uri, parent_id, status), f"marking the study run {parent_id} {status}"
                )
            except tracking.TrackingUnavailable as exc:  # the trials are safe; only the parent run's status is stale
                print(f"raysem: {exc}; the study run stays RUNNING in MLflow")
        ray.kill(logger)
    return StudyOutcome(
        spec.name, spec.experiment, uri, parent_id, total, time.time() - started, left, storage, best, ran
    )


def _confirm(
    spec: StudySpec,
    best: dict[str, Any],
    trainable: Any,
    storage: Path,
    progress: Progress,
    resume: bool,
    stop: StopOnSigint,
) -> None:
    """Run the confirmation units as a grid of their own (``<name>-confirm``); resumable like any study."""
    units = {"unit": tune.grid_search(confirmation_units(spec, best))}
    fit(
        make_tuner(spec, trainable, storage / f"{spec.name}-confirm", units, None, 1, progress, resume),
        tune_trial_count(units, 1),
        stop,
    )
