"""The worker side of a study: one unit (a Tune trial) runs its trials on the worker's resident base model
and hands their results to the study's trial logger. Trials whose MLflow run exists are skipped."""

from __future__ import annotations

import ctypes
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ray import tune

from raysem.data.facts import Fact
from raysem.service.interrupt import wait_at_barrier
from raysem.service.planning import trial_key, trial_params
from raysem.service.spec import FILTER_FIELDS, StudySpec
from raysem.training.results import TrialResult, trial_aggregates


@dataclass
class StudyContext:
    """What every unit needs from the driver: the spec, the distance table, and the study's trial logger."""

    spec_json: str
    table: pd.DataFrame
    facts: list[dict[str, Any]]
    logger: Any
    """Handle of the ``tracking.TrialLogger`` actor on the driver's node."""
    fingerprint: str | None
    """The study's identity fingerprint (``raysem.service.identity``), part of every trial key."""
    barrier: str | None = None
    """Test hook: the folder of ``interrupt.wait_at_barrier`` (``$RAYSEM_UNIT_BARRIER`` on the driver)."""


_WORKER: dict[str, Any] = {}


def _resident(spec: StudySpec):
    """The worker's resident base model under the study's prompting, on the device Ray assigned this worker
    and in the spec's precision (loaded once per worker process); ``_WORKER["params"]`` says where it runs."""
    import ray

    from raysem.models.device import assigned_device, device_params, resolve_dtype
    from raysem.training.trial import ResidentModel

    device = assigned_device(ray.get_gpu_ids())
    dtype = resolve_dtype(spec.precision, device)
    key = (spec.model, spec.prompting, device, dtype)
    if _WORKER.get("key") != key:
        _WORKER["resident"] = ResidentModel(spec.model, dtype=dtype, device=device, prompting=spec.prompting)
        _WORKER["key"], _WORKER["params"] = key, device_params(device, dtype)
    return _WORKER["resident"]


def _failed_result(
    key: str, cfg_dump: dict[str, Any], test: list[Fact], table: pd.DataFrame, error: str
) -> TrialResult:
    """A trial that raised before it had records: its aggregates as ``trial_aggregates`` gives them (NaN metrics)."""
    dist = dict(zip(table["fact_id"], table["dist_old"]))
    ids = [f.id for f in test]
    aggregates = trial_aggregates([], ids, [dist.get(i, float("nan")) for i in ids], n_test=len(test), failed=True)
    return TrialResult(key, cfg_dump, ids, ids, [], aggregates, [], {"error": error})


def _training_set(
    spec: StudySpec, point: dict[str, Any], test: list[Fact], facts: list[Fact], table: pd.DataFrame, seed: int
) -> tuple[list[Fact], dict[str, float]]:
    """The training facts (the sampled set itself, or the set after the data filter / random replacement),
    what the filter had to leave alone (``filter_kept_undefined`` members of K and ``filter_pool_excluded``
    pool facts without a target distance: empty y_old) and the set it scored (``train_dist_mean`` and
    ``train_dist_var`` over its defined distances)."""
    from raysem.semantics.filter import replace_training_set

    filt = {**spec.filter.model_dump(), **{f: point[f] for f in FILTER_FIELDS if f in point}}
    if filt["filter_mode"] == "none" or not filt["replace"]:
        return test, {}
    dist = dict(zip(table["fact_id"], table["dist_old"]))
    chosen = {f.id for f in test}
    pool = [f.id for f in facts if f.id not in chosen and f.id in dist]
    result = replace_training_set(
        filt["filter_mode"],
        [f.id for f in test],
        [dist[f.id] for f in test],
        pool,
        [dist[i] for i in pool],
        replace=filt["replace"],
        lam=filt["filter_lambda"],
        mean_min=filt["mean_min"],
        mean_max=filt["mean_max"],
        seed=seed,
        sigma=filt["filter_sigma"],
    )
    by_id = {f.id: f for f in facts}
    counts = {
        "filter_kept_undefined": float(len(result.kept_undefined)),
        "filter_pool_excluded": float(len(result.excluded_pool)),
        "train_dist_mean": result.after["mean"],
        "train_dist_var": result.after["var"],
    }
    return [by_id[i] for i in result.train_ids], counts


def run_unit(config: dict[str, Any], context: StudyContext) -> dict[str, float]:
    """Run one unit inside a Tune trial: its trials, logged one MLflow child run each; returns the unit summary."""
    import ray

    from raysem.data.sampling import sample_fact_sets
    from raysem.models.device import assigned_device
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
        confirm = spec.search.confirm
        assert confirm is not None, "confirmation units come from search.confirm"
        sets = sample_fact_sets(facts, k, confirm.n_samplings, confirm.seed)
    else:
        sets = sample_fact_sets(facts, k, spec.sampling.n_for(k), spec.sampling.seed)
    keyed = {**point, "phase": "confirm"} if phase == "confirm" else point
    keys = {s: trial_key(keyed, s, k, context.fingerprint) for s in samplings}
    assigned_device(ray.get_gpu_ids())  # a reserved GPU that CUDA cannot see stops the unit, before any trial
    wait_at_barrier(context.barrier)
    done = set(ray.get(context.logger.done_among.remote(list(keys.values()))))
    base_seed = spec.trial_config().seed
    todo = [
        (keys[s], s, spec.point_config(point, seed=base_seed + s), sets[s]) for s in samplings if keys[s] not in done
    ]

    results: list[tuple[str, int, Any, TrialResult, str | None]] = []
    if todo and spec.packs(point):
        resident = _resident(spec)
        packed = run_packed_trials(
            resident.lm,
            [t[3][0] for t in todo],
            [t[2] for t in todo],
            base,
            resident.embedder,
            trial_ids=[t[0] for t in todo],
        )
        for (key, s, cfg, _), result in zip(todo, packed):
            results.append((key, s, cfg, result, result.analysis.get("error")))
    else:
        for key, s, cfg, test in todo:
            try:
                train, filter_counts = _training_set(spec, point, test, facts, context.table, base_seed + s)
                if cfg.method == "full":
                    result = run_full_finetune(
                        spec.model,
                        train,
                        test,
                        base,
                        cfg,
                        use_gpu=spec.resources.gpu > 0 or "GPU" in spec.resources.full_ft_worker,
                        precision=spec.precision,
                        resources_per_worker=spec.resources.full_ft_worker or None,
                        storage_path=str(Path(spec.storage_path).resolve()),
                        trial_id=key,
                        wait_for_resources=spec.resources.expect_autoscaling,
                        prompting=spec.prompting,
                        max_failures=spec.failure.max_failures,
                    )
                else:
                    result = run_trial(_resident(spec), train, test, base, cfg, trial_id=key, analyses=spec.analyses)
                result.aggregates.update(filter_counts)
                results.append((key, s, cfg, result, None))
            except (RuntimeError, ValueError) as exc:
                message = f"{type(exc).__name__}: {exc}"
                results.append(
                    (key, s, cfg, _failed_result(key, cfg.model_dump(), test, context.table, message), message)
                )
                traceback.print_exc()

    objective, logged = [], []
    for key, s, cfg, result, error in results:
        params = {
            **trial_params(spec, point, s, k, cfg.model_dump()),
            "phase": phase,
            "fingerprint": context.fingerprint or "none",
            **(_WORKER.get("params", {}) if cfg.method != "full" else {}),  # DeepSpeed's workers place themselves
            **(
                {"lora_targets": ",".join(cfg.targets(_resident(spec).lm.model))}
                if cfg.method in ("lora", "adalora")
                else {}
            ),
        }
        logged.append((key, params, result, error))
        if not error:
            objective.append(result.aggregates.get(spec.objective, float("nan")))
    ray.get(context.logger.record.remote(logged))
    skipped = [keys[s] for s in samplings if keys[s] in done]
    if skipped:  # a unit run again after an interruption: its done trials count towards its objective too
        objective += ray.get(context.logger.metric_of.remote(skipped, spec.objective))
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
