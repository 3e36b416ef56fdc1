"""How the report writes numbers and labels: percentages with their intervals, paired deltas, counts, bins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raysem.report import analysis as an
from raysem.report.render import Table, fmt_ci
from raysem.report.stats import Estimate

PCT = 100.0


SCALED_METRICS = {
    "accuracy": "Accuracy",
    "token_accuracy": "Token accuracy",
    "generality": "Generality",
    "locality": "Locality",
    "locality_soft": "Soft locality",
    "portability": "Portability",
}


def ci_text(est: Estimate, n: int) -> str:
    """``0.42 [0.30, 0.55]`` for a terminal; ``0.42 (n = 1, no CI)`` where there is no interval."""
    if np.isnan(est.low) or np.isnan(est.high):
        return f"{est.estimate:.2f} (n = {n}, no CI)"
    return f"{est.estimate:.2f} [{est.low:.2f}, {est.high:.2f}]"


def pct(est: Estimate) -> str:
    return fmt_ci(est, PCT)


def pp(delta: dict[str, Any]) -> str:
    """A paired delta in percentage points."""
    return fmt_ci(Estimate(delta["delta"], delta["low"], delta["high"]), PCT, signed=True)


def p_value(delta: dict[str, Any]) -> str:
    """The paired sign-flip test's two-sided p-value."""
    value = delta.get("p_value", float("nan"))
    return "—" if np.isnan(value) else f"{value:.3g}"


def share(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.0%}"


def count(value: float) -> str:
    """A mean count per trial; — when the trials did not log it."""
    return "—" if np.isnan(value) else f"{value:.1f}"


def with_labels(frame: pd.DataFrame, panel_cols: list[str], series_cols: list[str]) -> pd.DataFrame:
    """Adds string columns ``panel`` and ``series`` labelling each row by the given params."""
    out = frame.copy()
    out["panel"] = an.config_labels(out, panel_cols) if len(out) else []
    out["series"] = an.config_labels(out, series_cols) if len(out) else []
    return out


def bin_label(row: pd.Series) -> str:
    return f"[{row['lo']:.1f}, {row['hi']:.1f}{']' if row['hi'] >= 1 else ')'}"


def binned_table(frame: pd.DataFrame, caption: str) -> Table:
    """The data of a binned accuracy figure: one row per (panel, series, bin)."""
    rows = [
        [
            r["panel"],
            r["series"],
            bin_label(r),
            str(r["n_facts"]),
            str(r["n_trials"]),
            pct(Estimate(r["estimate"], r["low"], r["high"])),
        ]
        for _, r in frame.sort_values(["panel", "series", "bin"]).iterrows()
    ]
    return Table(caption, ["Panel", "Series", "Distance bin", "Facts", "Trials", "Accuracy (%)"], rows)
