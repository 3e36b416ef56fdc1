"""A trial's outcome: per-fact records and the trial-level aggregates computed from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RECORD_FIELDS: tuple[str, ...] = (
    "fact_id",
    "prompt",
    "target",
    "y_old",
    "y_old_raw",
    "y_new",
    "y_new_raw",
    "exact_match",
    "token_accuracy",
    "generality",
    "locality",
    "locality_soft",
    "portability",
    "dist_old",
    "dist_new",
    "deviation",
    "rd",
    "bad_case",
    "y_new_empty",
)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics of a trial's test records (means over facts; NaN-aware where a metric can be undefined)."""
    if not records:
        raise ValueError("a trial has no per-fact records to aggregate")
    bad = [r for r in records if r["bad_case"]]
    rd = [r["rd"] for r in records]
    return {
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
        "empty_old": float(sum(math.isnan(r["dist_old"]) for r in records)),
        "empty_new": float(sum(bool(r["y_new_empty"]) for r in records)),
    }


RECORD_METRICS: tuple[str, ...] = tuple(
    aggregate(
        [
            {
                "exact_match": 0.0,
                "token_accuracy": 0.0,
                "generality": 0.0,
                "locality": 0.0,
                "locality_soft": 0.0,
                "portability": 0.0,
                "deviation": False,
                "rd": 0.0,
                "bad_case": False,
                "y_new_empty": False,
                "dist_old": 0.0,
            }
        ]
    )
)
"""The keys ``aggregate`` gives: NaN in a trial that failed before it had records."""


def accuracy_by_training(
    train_ids: Sequence[str], records: list[dict[str, Any]], added_records: Sequence[dict[str, Any]] = ()
) -> dict[str, float]:
    """Accuracy split by what was trained (data filtering): ``retained_accuracy`` on test facts still in the
    training set, ``replaced_accuracy`` on those replaced (never trained), ``trained_accuracy`` on every fact
    trained (the retained ones and the ``added_records`` of the facts added), and ``n_retained`` /
    ``n_replaced``; the plain accuracy for the first and third when the training set is the test set."""
    trained = set(train_ids)
    retained = [r["exact_match"] for r in records if r["fact_id"] in trained]
    replaced = [r["exact_match"] for r in records if r["fact_id"] not in trained]
    added = [r["exact_match"] for r in added_records]
    return {
        "retained_accuracy": _nanmean(retained),
        "replaced_accuracy": _nanmean(replaced),
        "trained_accuracy": _nanmean(retained + added),
        "n_retained": float(len(retained)),
        "n_replaced": float(len(replaced)),
    }


PACK_KEYS = ("pack_wall_s", "pack_train_s", "pack_size")
"""Aggregates a packed trial adds about its pack (its wall and training seconds, its size)."""


def trial_aggregates(
    records: list[dict[str, Any]],
    train_ids: Sequence[str],
    train_dist: Sequence[float],
    *,
    n_test: int,
    added_records: Sequence[dict[str, Any]] = (),
    loss_curve: Sequence[float] = (),
    steps: float | None = None,
    tokens: float = 0.0,
    wall_s: float = math.nan,
    failed: bool = False,
) -> dict[str, float]:
    """Every aggregate of one trial, built here alone for unpacked, packed, full fine-tuning and failed trials:
    ``aggregate`` of the test records (NaN without records), ``n_facts`` (test facts), the training set's
    target distances (``dist_mean``, ``dist_var``, and ``dist_undefined``: training facts without one, an empty
    y_old), ``accuracy_by_training``, and the training's ``steps`` (default: the loss curve's length),
    ``tokens``, ``final_loss``, ``wall_s`` and ``failed``."""
    dist = np.asarray(train_dist, dtype=float)
    finite = dist[~np.isnan(dist)]
    split = (
        accuracy_by_training(train_ids, records, added_records)
        if records
        else {
            "retained_accuracy": math.nan,
            "replaced_accuracy": math.nan,
            "trained_accuracy": math.nan,
            "n_retained": math.nan,
            "n_replaced": math.nan,
        }
    )
    return {
        **(aggregate(records) if records else dict.fromkeys(RECORD_METRICS, math.nan)),
        "n_facts": float(n_test),
        "dist_mean": float(finite.mean()) if finite.size else math.nan,
        "dist_var": float(finite.var()) if finite.size else math.nan,
        "dist_undefined": float(dist.size - finite.size),
        **split,
        "steps": float(len(loss_curve) if steps is None else steps),
        "tokens": float(tokens),
        "final_loss": float(loss_curve[-1]) if len(loss_curve) else math.nan,
        "wall_s": float(wall_s),
        "failed": float(failed),
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
