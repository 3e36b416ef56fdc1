"""Studies on Ray Tune: expand a spec into work units, run them on resident models, log every trial to MLflow.

A *trial* is one knowledge-learning run (one fact set, one configuration) and gets one MLflow
child run. A *unit* is what one Tune trial executes: a block of samplings for one point of the
sweep. Single-fact LoRA samplings are packed ``pack_size`` to a unit and trained together;
other units hold one sampling. Tune reports once per unit, actors are reused so the base model
stays resident in each worker, and trials whose MLflow run already exists are never redone.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from raysem.data.facts import Fact, FactSet
from raysem.errors import SpecError
from raysem.service import tracking
from raysem.service.local_ray import init_local_ray
from raysem.service.spec import FILTER_FIELDS, StudySpec
from raysem.service.storage import check_storage, cluster_hosts
from raysem.training.results import TrialResult

# Tune's per-trial loggers and frequent experiment snapshots make the driver the bottleneck at thousands of trials.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "30")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# SIGINT is the study's (see StopOnSigint): Tune's own handler outlives tune.run and swallows a
# Ctrl-C that arrives between two Tune runs.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")


class ResourceError(RuntimeError):
    """The Ray cluster cannot offer what a study's trials ask for."""


class StudyInterrupted(RuntimeError):
    """A Tune run ended before all its trials did (SIGINT, or ``failure.fail_fast`` after a failed trial)."""


class StopOnSigint:
    """Within a study, the first SIGINT stops the running Tune run the way Tune's Ctrl-C does (through
    the SIGUSR1 handler each Tune run installs) and is remembered, so the study stops instead of going
    on to its next phase; a second SIGINT interrupts at once. Outside the main thread, does nothing."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def __enter__(self) -> "StopOnSigint":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: checkpoint the experiment, end the run


def trial_key(point: dict[str, Any], sampling: int, k: int) -> str:
    """A stable key for one logical trial: the sweep point, the set size and the sampling index."""
    blob = json.dumps({"point": point, "sampling": sampling, "k": k}, sort_keys=True, default=str)
    return "t-" + hashlib.sha1(blob.encode()).hexdigest()[:16]


def packs(spec: StudySpec, point: dict[str, Any]) -> bool:
    """Whether samplings at this point train as packs of single-fact LoRA trials."""
    k = int(point.get("k", spec.sampling.k))
    method = point.get("method", spec.trial.get("method", "lora"))
    return k == 1 and method == "lora" and spec.pack_size > 1


def sampling_blocks(spec: StudySpec, point: dict[str, Any]) -> list[list[int]]:
    """Samplings grouped into units: packs of ``pack_size`` for single-fact LoRA, one each otherwise."""
    size = spec.pack_size if packs(spec, point) else 1
    indices = list(range(spec.sampling.n_for(int(point.get("k", spec.sampling.k)))))
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def expand_units(spec: StudySpec) -> list[dict[str, Any]]:
    """Grid search: the explicit list of units (point × sampling block), sampling-major: every point's
    first block, then every point's second, … so that a study stopped part-way leaves complete pairs
    (the same sampling under γ = 0 and γ > 0, filter and random) rather than one arm finished."""
    per_point = [(p, sampling_blocks(spec, p)) for p in spec.grid_points()]
    rounds = max((len(blocks) for _, blocks in per_point), default=0)
    return [{"point": p, "samplings": blocks[i]} for i in range(rounds) for p, blocks in per_point if i < len(blocks)]


def count_trials(spec: StudySpec) -> int:
    """How many logical trials (MLflow child runs) the study will produce."""
    if spec.search.algorithm == "grid":
        per_point = [spec.sampling.n_for(int(p.get("k", spec.sampling.k))) for p in spec.grid_points()]
        return sum(per_point) * spec.search.num_samples
    confirm = 2 * spec.search.confirm.n_samplings if spec.search.confirm else 0
    return spec.search.num_samples * spec.sampling.n_for(spec.sampling.k) + confirm


def trial_params(spec: StudySpec, point: dict[str, Any], sampling: int, k: int, cfg_dump: dict[str, Any]) -> dict[str, Any]:
    """The MLflow params of one trial child run."""
    filt = {**spec.filter.model_dump(), **{f: point[f] for f in FILTER_FIELDS if f in point}}
    group = ",".join(f"{n}={point[n]}" for n in sorted(point)) or "base"
    return {
        **{k2: v for k2, v in cfg_dump.items() if k2 not in ("target_modules",)},
        "target_modules": ",".join(cfg_dump.get("target_modules", ())),
        **filt,
        "k": k,
        "sampling": sampling,
        "dataset": spec.dataset,
        "model": spec.model,
        **spec.prompting.key(),
        "study_kind": spec.kind,
        "group": group,
    }


@dataclass
class StudyContext:
    """What every unit needs from the driver: the spec, the distance table, and the study's trial logger."""

    spec_json: str
    table: pd.DataFrame
    facts: list[dict[str, Any]]
    logger: Any
    """Handle of the ``tracking.TrialLogger`` actor on the driver's node."""


_WORKER: dict[str, Any] = {}


def _resident(spec: StudySpec):
    """The worker's resident base model under the study's prompting (loaded once per worker process)."""
    from raysem.training.trial import ResidentModel

    key = (spec.model, spec.prompting)
    if _WORKER.get("key") != key:
        _WORKER["resident"] = ResidentModel(spec.model, prompting=spec.prompting)
        _WORKER["key"] = key
    return _WORKER["resident"]


def _failed_result(key: str, cfg_dump: dict[str, Any], train: list[Fact], test: list[Fact], error: str) -> TrialResult:
    return TrialResult(key, cfg_dump, [f.id for f in train], [f.id for f in test], [], {"failed": 1.0}, [], {"error": error})


def _training_set(
    spec: StudySpec, point: dict[str, Any], test: list[Fact], facts: list[Fact], table: pd.DataFrame, seed: int
) -> tuple[list[Fact], dict[str, float]]:
    """The training facts (the sampled set itself, or the set after the data filter / random replacement)
    and what the filter had to leave alone: ``filter_kept_undefined`` members of K and
    ``filter_pool_excluded`` pool facts without a target distance (empty y_old)."""
    from raysem.semantics.filter import replace_training_set

    filt = {**spec.filter.model_dump(), **{f: point[f] for f in FILTER_FIELDS if f in point}}
    if filt["filter_mode"] == "none" or not filt["replace"]:
        return test, {}
    dist = dict(zip(table["fact_id"], table["dist_old"]))
    chosen = {f.id for f in test}
    pool = [f.id for f in facts if f.id not in chosen and f.id in dist]
    result = replace_training_set(
        filt["filter_mode"], [f.id for f in test], [dist[f.id] for f in test], pool, [dist[i] for i in pool],
        replace=filt["replace"], lam=filt["filter_lambda"], mean_min=filt["mean_min"], mean_max=filt["mean_max"], seed=seed,
    )  # fmt: skip
    by_id = {f.id: f for f in facts}
    counts = {"filter_kept_undefined": float(len(result.kept_undefined)), "filter_pool_excluded": float(len(result.excluded_pool))}
    return [by_id[i] for i in result.train_ids], counts


def run_unit(config: dict[str, Any], context: StudyContext) -> dict[str, float]:
    """Run one unit inside a Tune trial: its trials, logged one MLflow child run each; returns the unit summary."""
    from raysem.data.sampling import sample_fact_sets
    from raysem.semantics.tables import base_lookup
    from raysem.training.full_finetune import run_full_finetune
    from raysem.training.packed import run_packed_trials
    from raysem.training.trial import run_trial

    spec = StudySpec.model_validate_json(context.spec_json)
    unit = config.get("unit", config)
    point, samplings = dict(unit["point"]), list(unit["samplings"])
    phase = unit.get("phase", "grid" if spec.search.algorithm == "grid" else "search")
    k = int(point.get("k", spec.sampling.k))
    facts = [Fact.from_dict(f) for f in context.facts]
    base = base_lookup(context.table)
    if phase == "confirm":
        sets = sample_fact_sets(facts, k, spec.search.confirm.n_samplings, spec.search.confirm.seed)
    else:
        sets = sample_fact_sets(facts, k, spec.sampling.n_for(k), spec.sampling.seed)
    import ray

    keys = {s: trial_key({**point, "phase": "confirm"} if phase == "confirm" else point, s, k) for s in samplings}
    done = set(ray.get(context.logger.done_among.remote(list(keys.values()))))
    base_seed = int(spec.trial.get("seed", 0))
    todo = []
    for s in samplings:
        key = keys[s]
        if key in done:
            continue
        cfg = spec.trial_config(**{n: v for n, v in point.items() if n not in FILTER_FIELDS and n != "k"}, seed=base_seed + s)
        todo.append((key, s, cfg, sets[s]))

    results: list[tuple[str, int, Any, TrialResult, str | None]] = []
    if todo and packs(spec, point):
        resident = _resident(spec)
        packed = run_packed_trials(resident.lm, [t[3][0] for t in todo], [t[2] for t in todo], base, resident.embedder, trial_ids=[t[0] for t in todo])
        for (key, s, cfg, _), result in zip(todo, packed):
            results.append((key, s, cfg, result, result.analysis.get("error")))
    else:
        for key, s, cfg, test in todo:
            try:
                train, filter_counts = _training_set(spec, point, test, facts, context.table, base_seed + s)
                if cfg.method == "full":
                    result = run_full_finetune(
                        spec.model, train, test, base, cfg,
                        use_gpu=spec.resources.gpu > 0 or "GPU" in spec.resources.full_ft_worker,
                        resources_per_worker=spec.resources.full_ft_worker or None,
                        storage_path=str(Path(spec.storage_path).resolve()), trial_id=key,
                        wait_for_resources=spec.resources.expect_autoscaling, prompting=spec.prompting,
                        max_failures=spec.failure.max_failures,
                    )  # fmt: skip
                else:
                    result = run_trial(_resident(spec), train, test, base, cfg, trial_id=key, analyses=spec.analyses)
                result.aggregates.update(filter_counts)
                results.append((key, s, cfg, result, None))
            except (RuntimeError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                results.append((key, s, cfg, _failed_result(key, cfg.model_dump(), test, test, error), error))
                traceback.print_exc()

    objective, logged = [], []
    for key, s, cfg, result, error in results:
        result.aggregates.setdefault("failed", 1.0 if error else 0.0)
        logged.append((key, {**trial_params(spec, point, s, k, cfg.model_dump()), "phase": phase}, result, error))
        if not error:
            objective.append(result.aggregates.get(spec.objective, float("nan")))
    ray.get(context.logger.record.remote(logged))
    return {
        spec.objective: float(np.nanmean(objective)) if np.isfinite(objective).any() else float("nan"),
        "trials_run": float(len(results)),
        "trials_skipped": float(len(samplings) - len(todo)),
        "trials_failed": float(sum(1 for r in results if r[4])),
    }


def _tune_trainable(config: dict[str, Any], context: StudyContext) -> None:
    try:
        metrics = run_unit(config, context)
    finally:
        release_freed_memory()
    tune.report(metrics)


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Tune runs each unit of a reused worker in a new thread, and glibc keeps the pages of a finished
    thread's malloc arena: without this a worker's RSS grew by gigabytes per 100-fact unit until
    Ray's memory monitor killed it (21 GB after nine units on a 24 GB machine)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
            offered = [{r: v for r, v in node.items() if not r.startswith("node:") and "memory" not in r} for node in nodes]
            raise ResourceError(
                f"no node of the Ray cluster can offer a {what}'s resources {bundle}; nodes offer {offered}. "
                "Change `resources` in the spec, or set resources.expect_autoscaling if an autoscaler adds such nodes."
            )


def study_facts(spec: StudySpec) -> tuple[FactSet, list[Fact]]:
    """The dataset and the facts that need base-model rows: all of them when filtering, else those sampled."""
    from raysem.data.datasets import load_facts
    from raysem.data.sampling import sample_fact_sets

    factset = load_facts(spec.dataset, limit=spec.data_limit)
    if spec.filters():
        return factset, factset.facts
    used: dict[str, Fact] = {}
    draws = [(k, spec.sampling.n_for(k), spec.sampling.seed) for k in spec.ks()]
    if spec.search.confirm:
        draws += [(k, spec.search.confirm.n_samplings, spec.search.confirm.seed) for k in spec.ks()]
    for k, n, seed in draws:
        for fact_set in sample_fact_sets(factset.facts, k, n, seed):
            used.update((f.id, f) for f in fact_set)
    return factset, list(used.values())


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
        print(f"[raysem] trials {self.done}/{self.total}  {rate * 3600:,.0f}/h  ETA {eta}{note}", file=sys.stderr, flush=True)


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
        return {"point": dims, "samplings": everything}, None, spec.search.num_samples
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(metric=spec.objective, mode=spec.search.mode, seed=spec.sampling.seed)
    return {"point": dims, "samplings": everything}, searcher, spec.search.num_samples


def best_point(spec: StudySpec, results: tune.ResultGrid) -> dict[str, Any]:
    """The searched point with the best objective (NaN results ignored); ties go to the first point in
    sorted order, so a resumed study confirms the same point whatever order Tune restores trials in."""
    sign = -1.0 if spec.search.mode == "max" else 1.0
    scored = []
    for result in results:
        value = result.metrics.get(spec.objective, math.nan)
        if isinstance(value, (int, float)) and math.isfinite(value):
            point = dict(result.config.get("unit", result.config)["point"])
            scored.append((sign * value, json.dumps(point, sort_keys=True, default=str), point))
    if not scored:
        raise RuntimeError(f"no search trial reported a finite {spec.objective}; there is no best point to confirm")
    return min(scored, key=lambda item: item[:2])[2]


def confirmation_units(spec: StudySpec, best: dict[str, Any]) -> list[dict[str, Any]]:
    """The best point and its baseline (γ = 0, λ = 0) on the confirmation samplings, paired by sampling."""
    baseline = {**best, **{name: 0.0 for name in ("gamma", "filter_lambda") if name in best}}
    points = [best] if baseline == best else [best, baseline]
    samplings = list(range(spec.search.confirm.n_samplings))
    size = spec.pack_size if packs(spec, best) else 1
    blocks = [samplings[i : i + size] for i in range(0, len(samplings), size)]
    return [{"point": p, "samplings": block, "phase": "confirm"} for p in points for block in blocks]


def spec_params(spec: StudySpec) -> dict[str, Any]:
    """The spec flattened into dotted params for the MLflow UI (``sampling.k``, ``sweep.gamma.grid``, …),
    with every trial setting as it takes effect (``trial.lr``: the method's default when the spec gives none)."""
    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(f"{prefix}.{key}" if prefix else str(key), item).items()}
        return {} if value is None else {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else value}

    return {**flat("", spec.model_dump(exclude={"quick", "trial"})), **flat("trial", spec.trial_config().model_dump())}


def run_study(spec: StudySpec, *, address: str | None = None, resume: bool = False) -> StudyOutcome:
    """Run (or resume) a study on the Ray cluster at ``address`` (local Ray when none), logging to MLflow."""
    import ray

    from raysem.semantics.tables import distance_table, table_path

    started = time.time()
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address or os.environ["RAY_ADDRESS"])
        else:
            init_local_ray()
    check_resources(spec)
    check_storage(spec.storage_path, hosts=cluster_hosts(), autoscaling=spec.resources.expect_autoscaling,
                  declared_shared=spec.storage_shared)  # fmt: skip
    uri = tracking.absolute_uri(spec.tracking.uri)
    storage = Path(spec.storage_path).resolve()
    study_dir = storage / spec.name
    pending = storage / "pending" / spec.name
    factset, needed = study_facts(spec)
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
                    print(f"raysem: trials kept by the interrupted run: {logged} logged now, {already} were in MLflow already"
                          + (f"; not logged: {errors}" if errors else ""))  # fmt: skip
        else:
            params = {"spec": spec.model_dump_json(), "objective": spec.objective, **spec_params(spec)}
            parent_id = tracking.start_study(uri, spec.experiment, spec.name, tags, params)
            study_dir.mkdir(parents=True, exist_ok=True)
            parent_file.write_text(parent_id)
    except tracking.TrackingUnavailable as exc:
        print(f"raysem: {exc}. Trial results are kept in {pending}; run `raysem sync` once the server is back.")

    logger = tracking.start_logger(uri, spec.experiment, parent_id, pending, tags)
    context = StudyContext(spec.model_dump_json(), table, [f.to_dict() for f in factset.facts], logger)
    trainable = tune.with_resources(tune.with_parameters(_tune_trainable, context=context), resources=spec.resources.bundle())
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
                if spec.search.confirm:
                    _confirm(spec, best, trainable, storage, progress, resume, stop)
        status = "FINISHED"
    finally:
        left = ray.get(logger.flush.remote())
        ran = ray.get(logger.recorded_count.remote())
        if parent_id:
            try:
                tracking.with_retries(lambda: tracking.finish_study(uri, parent_id, status), f"marking the study run {parent_id} {status}")
            except tracking.TrackingUnavailable as exc:  # the trials are safe; only the parent run's status is stale
                print(f"raysem: {exc}; the study run stays RUNNING in MLflow")
        ray.kill(logger)
    return StudyOutcome(spec.name, spec.experiment, uri, parent_id, total, time.time() - started, left, storage, best, ran)


def _tuner(
    spec: StudySpec, trainable: Any, folder: Path, param_space: dict[str, Any], searcher: Any, num_samples: int,
    progress: "Progress", resume: bool,
) -> tune.Tuner:
    """The Tuner of one Tune run in ``folder`` (its name under the storage path): restored when resuming
    and restorable, else new with the spec's concurrency and failure policy.

    A restored Tune run keeps the trials it was created with, so resuming after the spec's grid changed
    (γ = 2 added, more samplings), or when the folder has no record of its trials, starts a new Tune run
    instead, whose trials already in MLflow are skipped; a changed search cannot be resumed and is refused."""
    stamp = folder / "raysem-trials.sha1"
    shape = json.dumps({"space": param_space if searcher is None else spec.model_dump(include={"sweep", "search", "sampling", "exclude"}),
                        "num_samples": num_samples}, sort_keys=True, default=str)  # fmt: skip
    digest = hashlib.sha1(shape.encode()).hexdigest()
    if resume and tune.Tuner.can_restore(str(folder)):
        same = stamp.is_file() and stamp.read_text() == digest
        if same or (searcher is not None and not stamp.is_file()):
            return tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True)
        if searcher is not None:
            raise SpecError(f"{spec.name}: the sweep, search or sampling changed since the interrupted run in {folder}; "
                            "a search resumes only as it started (start a new study name for the new search)")  # fmt: skip
        print(f"raysem: {folder.name}: the spec's trials changed since the interrupted run (or it kept no record of them); "
              "starting a new Tune run (trials already in MLflow are skipped)")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples, max_concurrent_trials=spec.max_concurrent, reuse_actors=True, search_alg=searcher
        ),
        run_config=tune.RunConfig(
            name=folder.name,
            storage_path=str(folder.parent),
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_failures, fail_fast=spec.failure.fail_fast),
            callbacks=[progress],
            verbose=0,
        ),
    )


def _confirm(
    spec: StudySpec, best: dict[str, Any], trainable: Any, storage: Path, progress: "Progress", resume: bool, stop: StopOnSigint
) -> None:
    """Run the confirmation units as a grid of their own (``<name>-confirm``); resumable like any study."""
    units = {"unit": tune.grid_search(confirmation_units(spec, best))}
    _fit(_tuner(spec, trainable, storage / f"{spec.name}-confirm", units, None, 1, progress, resume), _tune_trials(units, 1), stop)


def _tune_trials(param_space: dict[str, Any], num_samples: int) -> int:
    """How many Tune trials a run of ``param_space`` makes: ``num_samples`` per grid point (one grid at most)."""
    grid = param_space.get("unit", {})
    return num_samples * (len(grid["grid_search"]) if isinstance(grid, dict) and "grid_search" in grid else 1)


def _fit(tuner: tune.Tuner, expected: int, stop: StopOnSigint) -> tune.ResultGrid:
    """``tuner.fit()``, raising :class:`StudyInterrupted` after a SIGINT or when fewer than ``expected`` Tune
    trials reported or errored: Tune returns normally when stopped, with the trials it stopped marked
    TERMINATED like finished ones, and what comes next (a best point, a finished study run) needs them all."""
    results = None if stop.received else tuner.fit()
    ended = sum(1 for r in results if r.error is not None or "trials_run" in r.metrics) if results else 0
    if stop.received or ended < expected:
        where = f"the Tune run at {results.experiment_path}" if results else "the study"
        raise StudyInterrupted(
            f"{where} stopped with {ended} of {expected} Tune trials ended "
            + ("(SIGINT). " if stop.received else f"({results.num_errors} errored; failure.fail_fast after a failed trial?). ")
            + "Every finished trial is logged; rerun with --resume to run the rest."
        )
    return results
