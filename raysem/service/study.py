"""Running a study on Ray Tune (the driver): check the cluster and the study's identity, log the study run,
run the spec's units (a grid, or a search and its confirmation) as resumable Tune runs, and mark the
study run FINISHED. Planning lives in ``planning``, the worker side in ``unit``, stopping in ``interrupt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from raysem.data.facts import FactSet
from raysem.errors import SpecError
from raysem.service import tracking
from raysem.service.identity import IDENTITY_PARAM, fingerprint, identity_changes, study_identity
from raysem.service.interrupt import BARRIER, StopOnSigint, StudyInterrupted, interrupt_at
from raysem.service.local_ray import init_local_ray
from raysem.service.planning import best_point, confirmation_units, count_trials, expand_units, spec_params, study_facts
from raysem.service.spec import StudySpec
from raysem.service.storage import check_storage, cluster_hosts
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


class Progress(tune.Callback):
    """Prints trials done / total, rate and ETA as units finish (one line per unit, driver-side and cheap)."""

    def __init__(self, total: int):
        self.total, self.start = total, time.time()
        self.per_unit: dict[str, int] = {}
        """Trials each Tune trial (unit) accounts for; a unit retried after a fault counts once."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A restored Tuner unpickles its callbacks: count from now, as this run's units report."""
        self.__dict__.update(state)
        self.per_unit, self.start = {}, time.time()

    @property
    def done(self) -> int:
        return sum(self.per_unit.values())

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.per_unit[trial.trial_id] = int(result.get("trials_run", 0) + result.get("trials_skipped", 0))
        failed = int(result.get("trials_failed", 0))
        elapsed = time.time() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - self.done) / rate:,.0f}s" if rate > 0 else "?"
        note = f", {failed} failed in this unit" if failed else ""
        print(
            f"[raysem] trials {self.done}/{self.total}  {rate * 3600:,.0f}/h  ETA {eta}{note}",
            file=sys.stderr,
            flush=True,
        )
        unit = trial.config.get("unit", trial.config)
        interrupt_at(unit.get("phase") or ("search" if "point" in trial.config else "grid"))


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


def _param_space(spec: StudySpec) -> tuple[dict[str, Any], Any, int]:
    """Tune's param space, search algorithm and num_samples for the spec's search."""
    if spec.search.algorithm == "grid":
        return {"unit": tune.grid_search(expand_units(spec))}, None, spec.search.num_samples
    dims = {}
    for name, dim in spec.sweep.items():
        if dim.choice is not None:
            dims[name] = tune.choice(dim.choice)
        elif dim.uniform is not None:
            dims[name] = tune.uniform(*dim.uniform)
        elif dim.loguniform is not None:
            dims[name] = tune.loguniform(*dim.loguniform)
        elif dim.randint is not None:
            dims[name] = tune.randint(*dim.randint)
    everything = list(range(spec.sampling.n_for(spec.sampling.k)))
    if spec.search.algorithm == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # Seeded, so that a search started anew (its Tune run stopped before saving any state) draws the same points.
        searcher = BasicVariantGenerator(random_state=spec.sampling.seed, max_concurrent=spec.max_concurrent)
        return {"point": dims, "samplings": everything}, searcher, spec.search.num_samples
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=spec.objective, mode=spec.search.mode, seed=spec.sampling.seed)
    return {"point": dims, "samplings": everything}, searcher, spec.search.num_samples


def resolve_identity(
    spec: StudySpec, uri: str, identity: dict[str, Any], new_experiment: bool
) -> tuple[StudySpec, str | None]:
    """The spec to run and the fingerprint its trial keys carry, after comparing its identity with the one
    recorded on every study run of its experiment: another identity is refused (SpecError naming the changed
    fields), or with ``new_experiment`` the study runs as ``<name>-<fingerprint>`` in an experiment of that
    name. An experiment whose study runs recorded no identity (made before identities) keeps its old keys."""
    fp = fingerprint(identity)
    try:
        tracking.check_reachable(uri)
        recorded = tracking.study_identities(uri, spec.experiment, IDENTITY_PARAM)
    except tracking.TrackingUnavailable:
        return spec, fp  # the keys still carry the fingerprint: nothing of another identity is skipped
    if recorded and all(value is None for *_, value in recorded):
        print(
            f"raysem: experiment {spec.experiment!r} was begun before study identities were recorded; its trials keep their keys"
        )
        return spec, None
    for run_id, name, value in recorded:
        if value is None or fingerprint(json.loads(value)) == fp:
            continue
        if new_experiment:
            suffix = f"-{fp[:8]}"
            renamed = spec.model_copy(
                update={
                    "name": spec.name + suffix,
                    "tracking": spec.tracking.model_copy(update={"experiment": spec.experiment + suffix}),
                }
            )
            print(
                f"raysem: the spec differs from study run {name}; running it as study {renamed.name} in experiment {renamed.experiment!r}"
            )
            return resolve_identity(renamed, uri, identity, False)
        changes = "; ".join(identity_changes(json.loads(value), identity))
        raise SpecError(
            f"{spec.name}: experiment {spec.experiment!r} holds study run {name} ({run_id}) of another identity; "
            f"changed: {changes}. Its trials would be skipped as done: give the study a new name, or pass --new-experiment"
        )
    return spec, fp


def run_study(
    spec: StudySpec, *, address: str | None = None, resume: bool = False, new_experiment: bool = False
) -> StudyOutcome:
    """Run (or resume) a study on the Ray cluster at ``address`` (local Ray when none), logging to MLflow;
    ``new_experiment`` runs a spec whose identity differs from its experiment's under a new name instead of refusing it."""
    import ray

    from raysem.semantics.tables import distance_table, table_path

    started = time.time()
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address or os.environ["RAY_ADDRESS"])
        else:
            init_local_ray()
    check_resources(spec)
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
    # The whole dataset's table when it is cached already (it covers every sampled fact), else only the facts used.
    whole = table_path(spec.model, factset, spec.prompting).is_file()
    source = factset if whole else FactSet(factset.name, factset.format, needed, factset.sha256)
    table, _ = distance_table(spec.model, source, prompting=spec.prompting)
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
    param_space, searcher, num_samples = _param_space(spec)
    # Results live in MLflow and the pending store; with the per-trial loggers off, the ResultGrid
    # that fit() builds finds no result.json and would warn once per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    best = None
    status = "KILLED"
    try:
        with StopOnSigint() as stop:
            tuner = _tuner(spec, trainable, study_dir, param_space, searcher, num_samples, progress, resume)
            results = _fit(tuner, _tune_trials(param_space, num_samples), stop)
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


def _tuner(
    spec: StudySpec,
    trainable: Any,
    folder: Path,
    param_space: dict[str, Any],
    searcher: Any,
    num_samples: int,
    progress: Progress,
    resume: bool,
) -> tune.Tuner:
    """The Tuner of one Tune run in ``folder`` (its name under the storage path): restored when resuming
    and restorable, else new with the spec's concurrency and failure policy.

    A restored Tune run keeps the trials it was created with, so resuming after the spec's grid changed
    (γ = 2 added, more samplings), or when the folder has no record of its trials, starts a new Tune run
    instead, whose trials already in MLflow are skipped; a changed search cannot be resumed and is refused."""
    stamp = folder / "raysem-trials.sha1"
    shape = json.dumps(
        {
            "space": param_space
            if searcher is None
            else spec.model_dump(include={"sweep", "search", "sampling", "exclude"}),
            "num_samples": num_samples,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha1(shape.encode()).hexdigest()
    if resume and restorable(folder):
        same = stamp.is_file() and stamp.read_text() == digest
        if same or (searcher is not None and not stamp.is_file()):
            return tune.Tuner.restore(
                str(folder), trainable, resume_unfinished=True, resume_errored=True, param_space=param_space
            )
        if searcher is not None:
            raise SpecError(
                f"{spec.name}: the sweep, search or sampling changed since the interrupted run in {folder}; "
                "a search resumes only as it started (start a new study name for the new search)"
            )
        print(
            f"raysem: {folder.name}: the spec's trials changed since the interrupted run (or it kept no record of them); "
            "starting a new Tune run (trials already in MLflow are skipped)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            reuse_actors=True,
            search_alg=searcher,
            # a random search's variant generator limits its own concurrency (Tune ignores this one for it)
            max_concurrent_trials=None if spec.search.algorithm == "random" else spec.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures, fail_fast=spec.failure.fail_fast),
            callbacks=[progress],
            verbose=0,
        ),
    )


def restorable(folder: Path) -> bool:
    """Whether ``folder`` holds a Tune run that saved its state. A Tuner pickles itself (without its
    param space) as soon as it is made; one stopped before its first experiment checkpoint has no trials
    to restore, and ``Tuner.restore`` would restart it with an empty config."""
    return tune.Tuner.can_restore(str(folder)) and any(folder.glob("experiment_state-*.json"))


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
    _fit(
        _tuner(spec, trainable, storage / f"{spec.name}-confirm", units, None, 1, progress, resume),
        _tune_trials(units, 1),
        stop,
    )


def _tune_trials(param_space: dict[str, Any], num_samples: int) -> int:
    """How many Tune trials a run of ``param_space`` makes: ``num_samples`` per grid point (one grid at most)."""
    grid = param_space.get("unit", {})
    return num_samples * (len(grid["grid_search"]) if isinstance(grid, dict) and "grid_search" in grid else 1)


def _fit(tuner: tune.Tuner, expected: int, stop: StopOnSigint) -> tune.ResultGrid:
    """``tuner.fit()``, raising :class:`StudyInterrupted` unless all ``expected`` Tune trials finished: after a
    SIGINT (Tune returns normally when stopped, with the trials it stopped marked TERMINATED like finished
    ones), or when a unit errored past its retries (its trials are not logged; the error is quoted). What
    comes next (a best point, a finished study run) needs every unit."""
    results = None if stop.received else tuner.fit()
    finished = sum(1 for r in results if r.error is None and "trials_run" in r.metrics) if results else 0
    if results is not None and not stop.received and finished >= expected:
        return results
    where = f"the Tune run at {results.experiment_path}" if results else "the study"
    if results is not None and results.num_errors:
        first = str(next(r.error for r in results if r.error is not None)).strip().splitlines()[-1]
        reason = f"{results.num_errors} errored past failure.max_failures, the first with {first}"
    else:
        reason = "SIGINT" if results is None or stop.received else "stopped early (failure.fail_fast?)"
    raise StudyInterrupted(
        f"{where} stopped with {finished} of {expected} Tune trials finished ({reason}). "
        "Every finished trial is logged; rerun with --resume to run the rest."
    )
