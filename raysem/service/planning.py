"""Planning a study without Ray: trial keys, the units a spec expands to, how many trials it makes, each
trial's params, the facts it needs, and the search's best point and its confirmation units.

A *trial* is one knowledge-learning run (one fact set, one configuration) and gets one MLflow child
run. A *unit* is what one Tune trial executes: a block of samplings for one point of the sweep.
Single-fact LoRA samplings are packed ``pack_size`` to a unit and trained together; other units hold
one sampling.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from raysem.data.facts import Fact, FactSet
from raysem.service.spec import FILTER_FIELDS, StudySpec


def trial_key(point: dict[str, Any], sampling: int, k: int, fingerprint: str | None) -> str:
    """A stable key for one logical trial: the sweep point, the set size, the sampling index and the study's
    identity fingerprint (None only for an experiment begun before identities were recorded)."""
    key = {"point": point, "sampling": sampling, "k": k, **({"fingerprint": fingerprint} if fingerprint else {})}
    blob = json.dumps(key, sort_keys=True, default=str)
    return "t-" + hashlib.sha1(blob.encode()).hexdigest()[:16]


def sampling_blocks(spec: StudySpec, point: dict[str, Any]) -> list[list[int]]:
    """Samplings grouped into units: packs of ``pack_size`` for single-fact LoRA, one each otherwise."""
    size = spec.pack_size if spec.packs(point) else 1
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


def trial_params(
    spec: StudySpec, point: dict[str, Any], sampling: int, k: int, cfg_dump: dict[str, Any]
) -> dict[str, Any]:
    """The MLflow params of one trial child run."""
    filt = {**spec.filter.model_dump(), **{f: point[f] for f in FILTER_FIELDS if f in point}}
    group = ",".join(f"{n}={point[n]}" for n in sorted(point)) or "base"
    return {
        **{k2: v for k2, v in cfg_dump.items() if k2 not in ("target_modules",)},
        "target_modules": ",".join(cfg_dump.get("target_modules") or ()) or "peft default",
        **filt,
        "k": k,
        "sampling": sampling,
        "dataset": spec.dataset,
        "model": spec.model,
        **spec.prompting.key(),
        "study_kind": spec.kind,
        "group": group,
    }


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


def best_point(spec: StudySpec, results: Any) -> dict[str, Any]:
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
    if spec.search.confirm is None:
        raise ValueError(f"{spec.name}: no search.confirm, so there are no confirmation units")
    baseline: dict[str, Any] = {**best, **{name: 0.0 for name in ("gamma", "filter_lambda") if name in best}}
    points = [best] if baseline == best else [best, baseline]
    samplings = list(range(spec.search.confirm.n_samplings))
    size = spec.pack_size if spec.packs(best) else 1
    blocks = [samplings[i : i + size] for i in range(0, len(samplings), size)]
    return [{"point": p, "samplings": block, "phase": "confirm"} for p in points for block in blocks]


def spec_params(spec: StudySpec) -> dict[str, Any]:
    """The spec flattened into dotted params for the MLflow UI (``sampling.k``, ``sweep.gamma.grid``, …),
    with every trial setting as it takes effect (``trial.lr``: the method's default when the spec gives none)."""

    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return {
                k: v
                for key, item in value.items()
                for k, v in flat(f"{prefix}.{key}" if prefix else str(key), item).items()
            }
        return {} if value is None else {prefix: json.dumps(value) if isinstance(value, (list, tuple)) else value}

    return {**flat("", spec.model_dump(exclude={"quick", "trial"})), **flat("trial", spec.trial_config().model_dump())}
