"""The numbers behind each figure and table of the report, as plain DataFrames.

Conventions: the unit of resampling is the trial (per-fact shares are pooled within a trial and
bootstrapped over trials); "plain" trials are those trained without re-weighting (γ = 0) and
without data filtering, which is what the paper's analysis figures use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raysem.report.stats import (
    Estimate,
    bootstrap_ci,
    bootstrap_corr_ci,
    bootstrap_ratio_ci,
    bootstrap_ratio_difference_ci,
    difference_ci,
    paired_difference,
)
from raysem.semantics.embedding import distance_band, reweight_coefficient
from raysem.training.analysis import pca

BIN_EDGES = np.arange(11) / 10
"""Figure 3/4/8 bins: width 0.1 over [0, 1]; distances are clipped into [0, 1] before binning."""

BANDS = ("short", "medium", "long")
SETTING_COLUMNS = (
    "rank",
    "alpha",
    "dropout",
    "lr",
    "steps",
    "batch_size",
    "weight_decay",
    "optimizer",
    "prompt_style",
    "answer_budget",
)
"""Training settings a sweep may vary besides the studied factor; comparisons stay within one setting."""
CONFIG_COLUMNS = (
    "dataset",
    "model",
    "method",
    *SETTING_COLUMNS,
    "k",
    "gamma",
    "filter_mode",
    "filter_lambda",
    "filter_sigma",
    "replace",
    "mean_min",
    "mean_max",
)
"""Trial params that define a configuration in the headline table (only those that vary are shown)."""
HEADLINE_METRICS = ("accuracy", "token_accuracy", "generality", "locality", "portability")
PAIR_KEY = ("sampling", "seed")
"""Two trials of one configuration pair up when they trained on the same sampling with the same seed."""


def plain(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials (or records) trained with γ = 0 and no data filtering."""
    gamma = trials["gamma"].fillna(0.0)
    mode = trials["filter_mode"].fillna("none")
    return trials[(gamma == 0) & (mode == "none")]


def varying(frame: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """The columns that take more than one value in the frame (missing values count as one)."""
    return [c for c in columns if c in frame and frame[c].nunique(dropna=False) > 1]


def fmt_value(value: Any) -> str:
    """A param value as shown in labels and tables: integers without ``.0``, other floats to 4
    significant digits (a swept 0.2153133598719359 reads 0.2153; params and CSVs keep every digit),
    None/NaN as '—'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


SHORT_NAMES = {"gamma": "γ", "replace": "ρ", "filter_mode": "selection", "filter_lambda": "λ", "filter_sigma": "σ"}
NAME_COLUMNS = ("dataset", "model", "method")
"""Columns whose values are shown bare in labels (they are names, not settings)."""


def label(row: pd.Series | dict, columns: Sequence[str]) -> str:
    """A readable label: names bare, settings as ``k=10``, ``γ=1``, ``ρ=0.6``, joined by ' · '."""
    parts = []
    for col in columns:
        value = fmt_value(row[col])
        parts.append(value if col in NAME_COLUMNS else f"{SHORT_NAMES.get(col, col)}={value}")
    return " · ".join(parts) if parts else "all trials"


def _group_keys(frame: pd.DataFrame, columns: Sequence[str]) -> list[tuple[tuple, pd.DataFrame]]:
    if not columns:
        return [((), frame)]
    groups = frame.groupby(list(columns), dropna=False, sort=True)
    return [(key if isinstance(key, tuple) else (key,), part) for key, part in groups]


def distance_bin(dist: pd.Series) -> pd.Series:
    """Bin index 0..9 of each distance (clipped to [0, 1]); NaN stays NaN."""
    clipped = dist.clip(0.0, 1.0)
    idx = np.digitize(clipped, BIN_EDGES[1:-1]).astype(float)
    idx[clipped.isna().to_numpy()] = np.nan
    return pd.Series(idx, index=dist.index)


# ---------------------------------------------------------------- binned per-fact shares


def binned_rate(
    records: pd.DataFrame,
    value: str | Callable[[pd.DataFrame], pd.Series],
    group_cols: Sequence[str],
    where: Callable[[pd.DataFrame], pd.Series] | None = None,
) -> pd.DataFrame:
    """Pooled mean of a per-fact value in each target-distance bin, per group, with a trial-level CI.

    ``value`` is a column (or a function of the records) averaged over the facts of a bin; NaN
    values do not count. ``where`` restricts the facts that count (e.g. defined RD only).
    Returns one row per (group, bin) with ``n_facts``, ``n_trials``, ``estimate``, ``low``, ``high``.
    """
    if records.empty:
        return pd.DataFrame()
    frame = records.assign(_bin=distance_bin(records["dist_old"]))
    frame["_v"] = (frame[value] if isinstance(value, str) else value(frame)).astype(float)
    keep = frame["_bin"].notna() & frame["_v"].notna()
    if where is not None:
        keep &= where(frame).astype(bool)
    frame = frame[keep]
    rows = []
    for key, part in _group_keys(frame, group_cols):
        for b, in_bin in part.groupby("_bin"):
            per_trial = in_bin.groupby("run_id")["_v"].agg(["sum", "count"])
            est = bootstrap_ratio_ci(per_trial["sum"], per_trial["count"])
            rows.append(
                {
                    **dict(zip(group_cols, key)),
                    "bin": int(b),
                    "lo": BIN_EDGES[int(b)],
                    "hi": BIN_EDGES[int(b) + 1],
                    "n_facts": int(per_trial["count"].sum()),
                    "n_trials": len(per_trial),
                    **est._asdict(),
                }
            )
    return pd.DataFrame(rows)


def accuracy_by_distance(records: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Figure 3 / 8: exact-match accuracy per distance bin."""
    return binned_rate(records, "exact_match", group_cols)


NUMBER_OR_DATE = re.compile(
    r"\d|\b(january|february|march|april|may|june|july|august|september|october|november|december)\b", re.I
)
TARGET_KINDS = ("number or date", "entity")
"""Figure 3's strata: a target with a digit or a month's name is a number or a date, any other an entity."""


def target_kind(target: str) -> str:
    """``TARGET_KINDS``' label of one target."""
    return TARGET_KINDS[0] if NUMBER_OR_DATE.search(str(target)) else TARGET_KINDS[1]


def _part_contrast(
    frame: pd.DataFrame, group_cols: Sequence[str], parts: Sequence[str], reference: str, metric: str
) -> list[dict[str, Any]]:
    """Per group: ``metric`` pooled over the facts of each part (column ``_part``) with a CI over trials, the
    facts per part, and each other part's difference from ``reference`` (a resampled trial brings all its parts)."""
    frame = frame[frame["_part"].isin(parts) & frame[metric].notna()]
    rows = []
    for key, part in _group_keys(frame, group_cols):
        table = part.pivot_table(index="run_id", columns="_part", values=metric, aggfunc=["sum", "count"])
        hits = table["sum"].reindex(columns=list(parts), fill_value=0.0).fillna(0.0)
        counts = table["count"].reindex(columns=list(parts), fill_value=0).fillna(0)
        row: dict[str, Any] = {**dict(zip(group_cols, key)), "n_trials": len(hits)}
        for name in parts:
            row[name] = bootstrap_ratio_ci(hits[name], counts[name])
            row[f"n_{name}"] = int(counts[name].sum())
        for name in parts:
            if name != reference:
                row[f"{name}_minus_{reference}"] = bootstrap_ratio_difference_ci(
                    hits[reference], counts[reference], hits[name], counts[name]
                )
        rows.append(row)
    return rows


def band_label(dist: float) -> str:
    """A distance's Table 5 band, clipped to [0, 1] first, with [0, 0.1) as "below"; "none" for NaN."""
    if math.isnan(dist):
        return "none"
    clipped = min(1.0, max(0.0, dist))
    return "below" if clipped < 0.1 else distance_band(clipped)


def band_contrast(records: pd.DataFrame, group_cols: Sequence[str], metric: str = "exact_match") -> pd.DataFrame:
    """Figure 3's claim in numbers: ``metric`` in Table 5's bands (short [0.1, 0.3), medium [0.3, 0.6), long
    [0.6, 1.0], on distances clipped to [0, 1]) and below them ([0, 0.1)), and the differences of each from
    medium, pooled over facts with a CI over trials (a resampled trial brings all its bands). One row per
    group, with facts per band."""
    if records.empty:
        return pd.DataFrame()
    frame = records.assign(_part=records["dist_old"].map(band_label))
    return pd.DataFrame(_part_contrast(frame, group_cols, ("below", *BANDS), "medium", metric))


DECILE_PARTS = {"bottom": (0,), "middle": (3, 4, 5, 6), "top": (9,)}
"""Figure 3's model-relative bins: deciles (0-based) of the model's own dist_old; the ends against the middle 40%."""


def decile_contrast(
    records: pd.DataFrame, group_cols: Sequence[str], scale_cols: Sequence[str], metric: str = "exact_match"
) -> pd.DataFrame:
    """Figure 3 in model-relative bins: the deciles of dist_old over the distinct facts (``fact_id``) of each
    ``scale_cols`` group (one model on one dataset: its own scale of distances, not Table 5's absolute
    bands), and ``metric`` in the bottom decile and the top decile against the middle 40% (deciles 4–7),
    as ``band_contrast`` pools and resamples them. Each row carries its scale's cut points (``q10``,
    ``q30``, ``q70``, ``q90``)."""
    if records.empty:
        return pd.DataFrame()
    frames = []
    for _, part in _group_keys(records[records["dist_old"].notna()], scale_cols):
        facts = part.drop_duplicates("fact_id")["dist_old"].to_numpy(dtype=float)
        edges = np.quantile(facts, np.arange(1, 10) / 10)
        decile = np.searchsorted(edges, part["dist_old"].to_numpy(dtype=float), side="right")
        names = {d: name for name, deciles in DECILE_PARTS.items() for d in deciles}
        frames.append(
            part.assign(
                _part=[names.get(int(d), "other") for d in decile],
                q10=edges[0],
                q30=edges[2],
                q70=edges[6],
                q90=edges[8],
            )
        )
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames)
    rows = _part_contrast(frame, [*group_cols, "q10", "q30", "q70", "q90"], tuple(DECILE_PARTS), "middle", metric)
    return pd.DataFrame(rows)


def clipped_distances(records: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Per group: distinct facts with a distance, how many of their dist_old exceed 1 (clipped to 1 for bins
    and weights), and the same for the trained answers' dist_new (per record)."""
    rows = []
    for key, part in _group_keys(records, group_cols):
        old = part.drop_duplicates("fact_id")["dist_old"].dropna()
        new = part["dist_new"].dropna()
        rows.append(
            {
                **dict(zip(group_cols, key)),
                "n_old": len(old),
                "clipped_old": int((old > 1).sum()),
                "n_new": len(new),
                "clipped_new": int((new > 1).sum()),
            }
        )
    return pd.DataFrame(rows)


def deviation_by_distance(records: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Figure 4: deviation share and mean RD per distance bin (columns ``dev_*`` and ``rd_*``)."""
    dev = binned_rate(records, "deviation", group_cols)
    rd = binned_rate(records, "rd", group_cols)
    if dev.empty:
        return dev
    keys = [*group_cols, "bin", "lo", "hi"]
    dev = dev.rename(columns={c: f"dev_{c}" for c in ("n_facts", "n_trials", "estimate", "low", "high")})
    rd = rd.rename(columns={c: f"rd_{c}" for c in ("n_facts", "n_trials", "estimate", "low", "high")})
    return dev.merge(rd, on=keys, how="left") if not rd.empty else dev


def deviation_among_bad(records: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Table 1: share of bad cases that moved away from the target, per group, CI over trials."""
    rows = []
    empty = records["y_new_empty"].fillna(False).astype(bool) if "y_new_empty" in records else False
    frame = records.assign(_dev_bad=records["deviation"] & records["bad_case"], _empty_bad=empty & records["bad_case"])
    for key, part in _group_keys(frame, group_cols):
        per_trial = part.groupby("run_id").agg(
            bad=("bad_case", "sum"),
            dev_bad=("_dev_bad", "sum"),
            empty_bad=("_empty_bad", "sum"),
            dev=("deviation", "sum"),
            facts=("deviation", "size"),
        )
        share = bootstrap_ratio_ci(per_trial["dev_bad"], per_trial["bad"])
        overall = bootstrap_ratio_ci(per_trial["dev"], per_trial["facts"])
        rows.append(
            {
                **dict(zip(group_cols, key)),
                "n_trials": len(per_trial),
                "n_facts": int(per_trial["facts"].sum()),
                "n_bad": int(per_trial["bad"].sum()),
                "n_empty_bad": int(per_trial["empty_bad"].sum()),
                "share": share,
                "deviation_rate": overall,
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- trial-level summaries


def metric_ci(values: pd.Series | np.ndarray) -> Estimate:
    """Mean over trials with its bootstrap CI."""
    return bootstrap_ci(np.asarray(values, dtype=float))


def correlation_ci(x: pd.Series, y: pd.Series) -> Estimate:
    """Pearson correlation over trials with a bootstrap CI (resampling trials)."""
    return bootstrap_corr_ci(np.asarray(x, float), np.asarray(y, float))


def set_statistics(trials: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Figure 6: per group, correlation of trial accuracy with the set's mean and variance of distance."""
    rows = []
    for key, part in _group_keys(trials, group_cols):
        rows.append(
            {
                **dict(zip(group_cols, key)),
                "n_trials": len(part),
                "accuracy": metric_ci(part["accuracy"]),
                "r_mean": correlation_ci(part["dist_mean"], part["accuracy"]),
                "r_var": correlation_ci(part["dist_var"], part["accuracy"]),
            }
        )
    return pd.DataFrame(rows)


def distance_thirds(values: pd.Series) -> tuple[pd.Series, tuple[float, float, float, float]]:
    """Short / medium / long: three equal-width segments of the observed range of the values."""
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return pd.Series("medium", index=values.index), (lo, lo, hi, hi)
    e1, e2 = lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3
    bands = np.where(values < e1, "short", np.where(values < e2, "medium", "long"))
    return pd.Series(bands, index=values.index), (lo, e1, e2, hi)


def frobenius_by_third(frob: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, tuple[float, ...]]:
    """Table 2: mean of each Frobenius quantity per distance third (CI over trials)."""
    frob = frob.dropna(subset=["dist_mean"])
    thirds, edges = distance_thirds(frob["dist_mean"])
    frob = frob.assign(third=thirds)
    rows = []
    for name in keys:
        row: dict[str, Any] = {"quantity": name}
        for band in BANDS:
            part = frob.loc[frob["third"] == band, name] if name in frob else pd.Series(dtype=float)
            row[band] = metric_ci(part)
            row[f"n_{band}"] = int(part.notna().sum())
        rows.append(row)
    return pd.DataFrame(rows), edges


# ---------------------------------------------------------------- PCA of features


def feature_pca(features: dict[str, dict[str, np.ndarray]], n_components: int = 15) -> tuple[pd.DataFrame, np.ndarray]:
    """Figure 5: pooled PCA of the features of all given trials; one row per (trial, fact), and each
    component's share of the variance.

    Columns: run_id, fact_id, dist_old, band, pc1..pcR.
    """
    run_ids = sorted(features)
    stacked = np.concatenate([features[r]["features"].astype(np.float64) for r in run_ids])
    result = pca(stacked, n_components)
    dist = np.concatenate([np.asarray(features[r]["dist_old"], dtype=float) for r in run_ids])
    frame = pd.DataFrame(result.scores, columns=[f"pc{i + 1}" for i in range(result.scores.shape[1])])
    frame.insert(0, "run_id", np.repeat(run_ids, [len(features[r]["dist_old"]) for r in run_ids]))
    frame.insert(1, "fact_id", np.concatenate([np.asarray(features[r]["fact_ids"]).astype(str) for r in run_ids]))
    frame.insert(2, "dist_old", dist)
    frame.insert(3, "band", [distance_band(d) for d in dist])
    return frame, result.explained_variance_ratio


def pca_spread(points: pd.DataFrame) -> pd.DataFrame:
    """Per band: total variance of the features in PC space and their mean distance from the centre.

    Both are computed per trial (variance needs two facts of the band in the trial) and
    averaged over trials with a bootstrap CI.
    """
    pcs = [c for c in points if c.startswith("pc")]
    rows = []
    for band in BANDS:
        part = points[points["band"] == band]
        spreads, norms = [], []
        for _, trial in part.groupby("run_id"):
            x = trial[pcs].to_numpy()
            norms.append(float(np.linalg.norm(x, axis=1).mean()))
            spreads.append(float(x.var(axis=0, ddof=1).sum()) if len(x) > 1 else math.nan)
        rows.append(
            {
                "band": band,
                "n_points": len(part),
                "n_trials": part["run_id"].nunique(),
                "spread": metric_ci(spreads),
                "norm": metric_ci(norms),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- paired comparisons


def _by_pair_key(part: pd.DataFrame, metric: str) -> dict[tuple, float]:
    keyed = part.assign(_key=[tuple(fmt_value(v) for v in key) for key in part[list(PAIR_KEY)].itertuples(index=False)])
    return {key: float(value) for key, value in keyed.groupby("_key", sort=False)[metric].mean().items()}


def paired_delta(base: pd.DataFrame, other: pd.DataFrame, metric: str) -> dict[str, Any]:
    """``other - base`` on one metric, paired by (sampling, seed); trials sharing a key are averaged first."""
    return paired_difference(_by_pair_key(base, metric), _by_pair_key(other, metric))


def gamma_effect(
    trials: pd.DataFrame, group_cols: Sequence[str], metrics: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 3–4: metrics per γ (CI over trials) and paired deltas of every γ > 0 against γ = 0.

    Trials pair up within a group (dataset, model, method, k) by (sampling, seed), i.e. over the
    same (sampling, seed, k, method) keys.
    """
    levels, deltas = [], []
    for key, part in _group_keys(trials, group_cols):
        base = part[part["gamma"] == 0]
        for gamma, at in part.groupby("gamma"):
            levels.append(
                {
                    **dict(zip(group_cols, key)),
                    "gamma": gamma,
                    "n_trials": len(at),
                    **{m: metric_ci(at[m]) for m in metrics},
                }
            )
            if gamma == 0 or base.empty:
                continue
            row: dict[str, Any] = {**dict(zip(group_cols, key)), "gamma": gamma}
            for m in metrics:
                row[m] = paired_delta(base, at, m)
            deltas.append(row)
    return pd.DataFrame(levels), pd.DataFrame(deltas)


EXTREME_LAMBDA = 0.25
"""λ_i above which a fact counts as extreme-distance in Table 3's split: dist_old below ≈ 0.27 or above ≈ 0.73."""


def accuracy_by_lambda(records: pd.DataFrame) -> pd.DataFrame:
    """Per trial (``run_id``): exact match among its extreme-distance facts (λ_i > ``EXTREME_LAMBDA``, the
    facts the re-weighted loss weighs most) and among the rest, with each side's fact count."""
    lam = records["dist_old"].astype(float).map(reweight_coefficient)
    extreme = lam > EXTREME_LAMBDA
    exact = records["exact_match"].astype(float)
    out = {}
    for name, rows in (("extreme", extreme), ("medium", ~extreme)):
        grouped = exact[rows].groupby(records["run_id"][rows])
        out[f"accuracy_{name}"], out[f"facts_{name}"] = grouped.mean(), grouped.size()
    return pd.DataFrame(out)


def filter_effect(trials: pd.DataFrame, group_cols: Sequence[str], metric: str = "accuracy") -> pd.DataFrame:
    """Figure 7: ``metric`` per (group, ρ) for filtered and random replacement, and their paired delta."""
    rows = []
    for key, part in _group_keys(trials, [*group_cols, "replace"]):
        filt = part[part["filter_mode"] == "filter"]
        rand = part[part["filter_mode"] == "random"]
        rows.append(
            {
                **dict(zip([*group_cols, "replace"], key)),
                "filter": metric_ci(filt[metric]),
                "random": metric_ci(rand[metric]),
                "n_filter": len(filt),
                "n_random": len(rand),
                "delta": paired_delta(rand, filt, metric),
            }
        )
    return pd.DataFrame(rows)


FILTER_ONLY = ("filter_lambda", "filter_sigma", "mean_min", "mean_max")
"""Filter settings that random replacement does not read: Eq. 4's λ, σ and mean bounds."""


def share_random_arm(trials: pd.DataFrame, series_cols: Sequence[str]) -> pd.DataFrame:
    """Random replacement reads none of ``FILTER_ONLY``: where the random trials ran at one value of such a
    swept column, each joins every filter series of its dataset, ρ and other series params, so that a sweep
    over λ, σ or Mean_min needs one random arm, not one per value. A random trial without such a filter
    series keeps its own."""
    rand = trials["filter_mode"] == "random"
    shared = [c for c in series_cols if c in FILTER_ONLY and trials.loc[rand, c].nunique(dropna=False) == 1]
    if not shared:
        return trials
    keys = [c for c in ("dataset", "replace", *series_cols) if c not in shared]
    combos = trials.loc[~rand, [*keys, *shared]].drop_duplicates()
    random = trials[rand]
    found = random[keys].merge(combos[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    matched = found["_merge"].eq("both").to_numpy()
    joined = random[matched].drop(columns=shared).merge(combos, on=keys)[list(trials.columns)]
    return pd.concat([trials[~rand], joined, random[~matched]], ignore_index=True)


def split_by_training(trials: pd.DataFrame, group_cols: Sequence[str]) -> pd.DataFrame:
    """Per (group, ρ, selection): accuracy on the retained test facts (trained), on the replaced ones (never
    trained) and on every trained fact, with the mean number of retained and replaced facts per trial and the
    mean and variance of the trained set's target distances (each a mean over trials)."""
    rows = []
    for key, part in _group_keys(trials, [*group_cols, "replace", "filter_mode"]):
        counts = {
            c: float(part[c].mean()) if c in part and part[c].notna().any() else math.nan
            for c in ("n_retained", "n_replaced", "train_dist_mean", "train_dist_var")
        }
        rows.append(
            {
                **dict(zip([*group_cols, "replace", "filter_mode"], key)),
                "n_trials": len(part),
                **counts,
                **{
                    m: metric_ci(part[m])
                    for m in ("accuracy", "retained_accuracy", "replaced_accuracy", "trained_accuracy")
                },
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- headline and comparison


def config_labels(trials: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """A readable configuration label per trial from the given columns."""
    return trials.apply(lambda row: label(row, columns), axis=1) if len(trials) else pd.Series(dtype=str)


def headline(trials: pd.DataFrame, columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per configuration: number of trials and each headline metric's mean with its CI."""
    out: dict[str, dict[str, Any]] = {}
    labels = config_labels(trials, columns)
    for name, part in trials.groupby(labels, sort=True):
        entry: dict[str, Any] = {"n_trials": len(part)}
        for metric in HEADLINE_METRICS:
            if metric in part and part[metric].notna().any():
                entry[metric] = metric_ci(part[metric])
        out[str(name)] = entry
    return out


def compare_configs(a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Two experiments' configurations side by side: B − A per metric, paired where trials pair up."""
    la, lb = config_labels(a, columns), config_labels(b, columns)
    rows = []
    for name in sorted(set(la) & set(lb)):
        pa, pb = a[la == name], b[lb == name]
        for metric in metrics:
            if metric not in pa or metric not in pb:
                continue
            pair = paired_delta(pa, pb, metric)
            if pair["n_pairs"] >= 2:
                delta, how = Estimate(pair["delta"], pair["low"], pair["high"]), f"paired, {pair['n_pairs']} pairs"
            else:
                delta, how = difference_ci(pa[metric], pb[metric]), "unpaired"
            rows.append(
                {
                    "config": name,
                    "metric": metric,
                    "a": metric_ci(pa[metric]),
                    "b": metric_ci(pb[metric]),
                    "n_a": len(pa),
                    "n_b": len(pb),
                    "delta": delta,
                    "how": how,
                }
            )
    return pd.DataFrame(rows)


def example_responses(records: pd.DataFrame, per_band: int = 2, seed: int = 0) -> pd.DataFrame:
    """Table 5: a few per-fact responses per distance band and model, drawn reproducibly."""
    frame = records.assign(band=[distance_band(d) for d in records["dist_old"]])
    frame = frame[frame["band"].isin(BANDS) & frame["y_new"].fillna("").str.strip().ne("")]
    picks = []
    for band in BANDS:
        for _, part in frame[frame["band"] == band].groupby("model", sort=True):
            unique = part.drop_duplicates("fact_id")
            picks.append(unique.sample(n=min(per_band, len(unique)), random_state=seed).sort_values("dist_old"))
    return pd.concat(picks, ignore_index=True) if picks else pd.DataFrame()


# ---------------------------------------------------------------- sweeps


def param_importances(trials: pd.DataFrame, objective: str, swept: Sequence[str], mode: str) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) of the swept parameters for the objective, from the logged
    trials (added to an in-memory Optuna study); empty with fewer than two parameters or five trials."""
    import optuna

    rows = trials.dropna(subset=[objective, *swept])
    if len(swept) < 2 or len(rows) < 5:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    spans = {p: (float(rows[p].min()), float(rows[p].max())) for p in swept}
    dists = {
        p: optuna.distributions.FloatDistribution(lo, hi if hi > lo else lo + 1e-9) for p, (lo, hi) in spans.items()
    }
    for _, row in rows.iterrows():
        study.add_trial(
            optuna.trial.create_trial(
                params={p: float(row[p]) for p in swept}, distributions=dists, value=float(row[objective])
            )
        )
    return dict(optuna.importance.get_param_importances(study))
