"""A trial's outcome: per-fact records and the trial-level aggregates computed from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RECORD_FIELDS: tuple[str, ...] = (
    "fact_id", "prompt", "target", "y_old", "y_old_raw", "y_new", "y_new_raw",
    "exact_match", "token_accuracy", "generality", "locality", "locality_soft", "portability",
    "dist_old", "dist_new", "deviation", "rd", "bad_case", "y_new_empty",
)  # fmt: skip


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Trial-level metrics from per-fact records (means over facts; NaN-aware where a metric can be undefined)."""
    if not records:
        raise ValueError("a trial has no per-fact records to aggregate")
    dist_old = np.array([r["dist_old"] for r in records], dtype=float)
    bad = [r for r in records if r["bad_case"]]
    rd = [r["rd"] for r in records]
    return {
        "n_facts": float(len(records)),
        "accuracy": _nanmean([r["exact_match"] for r in records]),
        "token_accuracy": _nanmean([r["token_accuracy"] for r in records]),
        "generality": _nanmean([r["generality"] for r in records]),
        "locality": _nanmean([r["locality"] for r in records]),
        "locality_soft": _nanmean([r["locality_soft"] for r in records]),
        "portability": _nanmean([r["portability"] for r in records]),
        "deviation_rate": float(np.mean([r["deviation"] for r in records])),
        "rd_mean": _nanmean(rd),
        "rd_undefined": float(sum(math.isnan(v) for v in rd)),
        "bad_case_rate": len(bad) / len(records),
        "deviation_among_bad": (sum(r["deviation"] for r in bad) / len(bad)) if bad else math.nan,
        "empty_among_bad": (sum(bool(r["y_new_empty"]) for r in bad) / len(bad)) if bad else math.nan,
        "dist_mean": float(np.nanmean(dist_old)) if not np.isnan(dist_old).all() else math.nan,
        "dist_var": float(np.nanvar(dist_old)) if not np.isnan(dist_old).all() else math.nan,
        "dist_undefined": float(np.isnan(dist_old).sum()),
        "empty_old": float(np.isnan(dist_old).sum()),
        "empty_new": float(sum(bool(r["y_new_empty"]) for r in records)),
    }


@dataclass
class TrialResult:
    """What one trial returns: its config, fact ids, per-fact records, aggregates and diagnostics."""

    trial_id: str
    config: dict[str, Any]
    train_ids: list[str]
    test_ids: list[str]
    records: list[dict[str, Any]]
    aggregates: dict[str, float]
    loss_curve: list[float] = field(default_factory=list)
    analysis: dict[str, Any] = field(default_factory=dict)
    """Optional diagnostics: ``frobenius`` (Table 2 numbers) and ``features`` (PCA inputs, lists of floats)."""
