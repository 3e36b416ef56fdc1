"""``build_report``: turn a study's MLflow experiment into the paper's figures and tables.

Writes ``report.md`` (figures linked from ``figures/``), a self-contained ``report.html``,
the PNG figures and ``trials.csv`` into one folder, and logs that folder under ``report/``
to the study's parent run. Every headline number is a mean over trials with a 95% BCa
bootstrap interval over trials; γ and filter effects are paired over trials that share the
sampling and the seed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from raysem.report import analysis as an
from raysem.report import figures as figs
from raysem.report.data import FEATURE_TRIALS_PER_MODEL, KIND_TAG, ReportError, StudyData, load_study, open_client
from raysem.report.render import Figure, Section, Table, fmt_ci, render_html, render_markdown
from raysem.report.stats import Estimate

__all__ = ["ReportError", "ReportSummary", "build_report"]

PCT = 100.0
SCALED_METRICS = {"accuracy": "Accuracy", "token_accuracy": "Token accuracy", "generality": "Generality",
                  "locality": "Locality", "locality_soft": "Soft locality", "portability": "Portability"}  # fmt: skip
FROBENIUS_ROWS = (
    ("W_fro", "‖W_q‖_F"),
    ("dW_fro", "‖ΔW_q‖_F"),
    ("proj_dW_fro", "‖UᵀW_qV‖_F, U,V: top-r directions of ΔW_q"),
    ("proj_W_fro", "‖UᵀW_qV‖_F, U,V: top-r directions of W_q"),
    ("proj_random_fro", "‖UᵀW_qV‖_F, U,V: random orthonormal"),
    ("amplification", "amplification ‖ΔW_q‖_F / ‖UᵀW_qV‖_F (ΔW_q directions)"),
)


@dataclass
class ReportSummary:
    """What ``build_report`` produced."""

    experiment: str
    out_dir: Path
    markdown: Path
    html: Path
    sections: list[str]
    """Keys of the sections produced, in report order (e.g. ``fig3``, ``fig4_table1``, ``tables3_4``)."""
    skipped: dict[str, str]
    """Sections not produced, with the reason (usually: no runs of that kind)."""
    figures: dict[str, Path]
    headline: dict[str, dict[str, Any]]
    """Per configuration label: ``n_trials`` and, per metric, an ``Estimate`` (fractions, not %)."""
    n_trials: int
    n_failed: int
    n_duplicates: int
    parent_run_ids: list[str]
    logged_run_id: str | None = None
    """The parent run the report folder was logged to (None with ``log_to_mlflow=False`` or no parent)."""
    compare: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """A few lines for a terminal: what was written, what was skipped and why, where it was logged."""
        lines = ["headline: mean [95% bootstrap CI]"] if self.headline else []
        lines += [
            f"  {label}: {row['n_trials']} trials, "
            + ", ".join(f"{m} {_ci_text(e, row['n_trials'])}" for m, e in row.items() if m != "n_trials")
            for label, row in self.headline.items()
        ]
        lines.append(f"sections: {', '.join(self.sections)}")
        lines += [f"skipped {key}: {reason}" for key, reason in self.skipped.items()]
        lines += [f"note: {note}" for note in self.notes]
        if self.logged_run_id:
            lines.append(f"logged to run {self.logged_run_id} under report/")
        return "\n".join([*lines, str(self.markdown), str(self.html)])


@dataclass
class _Context:
    data: StudyData
    fig_dir: Path
    figures: dict[str, Path] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    """The study's spec as its latest parent run logged it (empty when unreadable)."""
    notes: list[str] = field(default_factory=list)
    """What the headline must say about itself (e.g. an unconfirmed sweep)."""

    def figure(self, key: str, path: Path, caption: str) -> Figure:
        self.figures[key] = path
        return Figure(caption, path)


def _ci_text(est: Estimate, n: int) -> str:
    """``0.42 [0.30, 0.55]`` for a terminal; ``0.42 (n = 1, no CI)`` where there is no interval."""
    if np.isnan(est.low) or np.isnan(est.high):
        return f"{est.estimate:.2f} (n = {n}, no CI)"
    return f"{est.estimate:.2f} [{est.low:.2f}, {est.high:.2f}]"


def _pct(est: Estimate) -> str:
    return fmt_ci(est, PCT)


def _pp(delta: dict[str, Any]) -> str:
    """A paired delta in percentage points."""
    return fmt_ci(Estimate(delta["delta"], delta["low"], delta["high"]), PCT, signed=True)


def _p(delta: dict[str, Any]) -> str:
    """The paired sign-flip test's two-sided p-value."""
    value = delta.get("p_value", float("nan"))
    return "—" if np.isnan(value) else f"{value:.3g}"


def _share(value: float) -> str:
    return "—" if np.isnan(value) else f"{value:.0%}"


def _with_labels(frame: pd.DataFrame, panel_cols: list[str], series_cols: list[str]) -> pd.DataFrame:
    """Adds string columns ``panel`` and ``series`` labelling each row by the given params."""
    out = frame.copy()
    out["panel"] = an.config_labels(out, panel_cols) if len(out) else []
    out["series"] = an.config_labels(out, series_cols) if len(out) else []
    return out


def _bin_label(row: pd.Series) -> str:
    return f"[{row['lo']:.1f}, {row['hi']:.1f}{']' if row['hi'] >= 1 else ')'}"


# ---------------------------------------------------------------- sections


def _overview(ctx: _Context, columns: list[str]) -> tuple[Section, dict[str, dict[str, Any]]]:
    data = ctx.data
    trials, ok = data.trials, data.ok
    kinds = sorted({p.data.tags.get(KIND_TAG, "?") for p in data.parents} | set(ok["study_kind"].dropna()))

    def names(column: str) -> str:
        return ", ".join(map(str, sorted(ok[column].dropna().unique()))) or "—"

    sec = Section("headline", "Overview and headline metrics")
    sec.text(
        f"{len(trials)} trials ({len(ok)} finished, {len(trials) - len(ok)} failed), "
        f"{len(data.parents)} study run(s), {data.duplicates} superseded duplicate run(s). "
        f"Study kinds: {', '.join(kinds) or '—'}. Datasets: {names('dataset')}. "
        f"Models: {names('model')}. Methods: {names('method')}."
    )
    failed = trials[trials["failed"]]
    if len(failed):
        shown = ", ".join(failed["trial_key"].astype(str).head(10))
        sec.text(f"Failed trials (excluded from every number below): {shown}{' …' if len(failed) > 10 else ''}.")
    if data.missing_records:
        sec.text(f"{len(data.missing_records)} finished trial(s) have no readable records/facts.parquet; "
                 "they count in trial-level numbers but not in per-fact figures.")  # fmt: skip
    head = an.headline(ok, columns)
    metrics = [m for m in an.HEADLINE_METRICS if any(m in e for e in head.values())]
    rows = [[name, str(e["n_trials"]), *(_pct(e[m]) if m in e else "—" for m in metrics)] for name, e in head.items()]
    sec.blocks.append(Table(
        "Headline metrics per configuration (%): mean over trials [95% bootstrap CI over trials].",
        ["Configuration", "Trials", *(f"{SCALED_METRICS[m]} (%)" for m in metrics)], rows,
    ))  # fmt: skip
    return sec, head


def _binned_table(frame: pd.DataFrame, caption: str) -> Table:
    """The data of a binned accuracy figure: one row per (panel, series, bin)."""
    rows = [
        [r["panel"], r["series"], _bin_label(r), str(r["n_facts"]), str(r["n_trials"]),
         _pct(Estimate(r["estimate"], r["low"], r["high"]))]
        for _, r in frame.sort_values(["panel", "series", "bin"]).iterrows()
    ]  # fmt: skip
    return Table(caption, ["Panel", "Series", "Distance bin", "Facts", "Trials", "Accuracy (%)"], rows)


def _fig3(ctx: _Context) -> Section | str:
    records = an.plain(ctx.data.records) if not ctx.data.records.empty else ctx.data.records
    if records.empty:
        return "no per-fact records of plain trials (γ = 0, no data filtering)"
    multi = records[records["k"] > 1]
    scope = "multi-fact trials (k > 1)" if not multi.empty else "all plain trials"
    records = multi if not multi.empty else records
    records = _with_labels(records, ["model", *an.varying(records, ["dataset"])], ["method"])
    binned = an.accuracy_by_distance(records, ["panel", "series"])
    path = figs.accuracy_vs_distance(binned, "method", ctx.fig_dir / "fig3_accuracy_vs_distance.png",
                                     f"Figure 3: accuracy vs target semantic distance ({scope}, γ = 0)")  # fmt: skip
    sec = Section("fig3", "Figure 3: accuracy vs target semantic distance")
    sec.text(f"Per-fact exact-match accuracy pooled over the facts of {scope} trained without re-weighting "
             "or filtering, in bins of width 0.1 of dist(y_old, y_t) (clipped to [0, 1]); the interval "
             "resamples trials. Facts whose base answer was empty have no distance and are not binned.")  # fmt: skip
    sec.blocks.append(ctx.figure("fig3", path, "Figure 3: accuracy per target-distance bin (top) and facts per bin (bottom)."))
    sec.blocks.append(_binned_table(binned, "Figure 3 data: accuracy per distance bin (%)."))
    bands = an.band_contrast(records, ["panel", "series"])
    rows = [[r["panel"], r["series"], *(f"{_pct(r[b])} ({r[f'n_{b}']})" for b in ("below", *an.BANDS)),
             *(fmt_ci(r[f"{b}_minus_medium"], PCT, signed=True) for b in ("below", "short", "long"))] for _, r in bands.iterrows()]  # fmt: skip
    sec.blocks.append(Table(
        "Figure 3 in the paper's bands (Table 5: short [0.1, 0.3), medium [0.3, 0.6), long [0.6, 1.0]; below 0.1 apart): "
        "accuracy (%) with facts in brackets, and the differences from medium in points, 95% CIs over trials. "
        "The paper's claim is that short and long are both below medium.",
        ["Panel", "Series", "[0, 0.1)", "short", "medium", "long", "[0, 0.1) − medium", "short − medium", "long − medium"], rows,
    ))  # fmt: skip
    return sec


def _fig4_table1(ctx: _Context) -> Section | str:
    records = ctx.data.records
    if records.empty or records[records["k"] == 1].empty:
        return "no single-fact (k = 1) trials with per-fact records"
    records = an.plain(records[records["k"] == 1])
    if records.empty:
        return "no plain (γ = 0, no filter) single-fact trials"
    group = ["model", "method", *an.varying(records, ["dataset"])]
    records = _with_labels(records, [], group)
    binned = an.deviation_by_distance(records, ["panel", "series"])
    path = figs.deviation_vs_distance(binned, "series", ctx.fig_dir / "fig4_deviation_vs_distance.png")
    sec = Section("fig4_table1", "Figure 4 and Table 1: moving away from the target (single-fact trials)")
    sec.text("A fact deviates when dist(y_new, y_t) > dist(y_old, y_t). RD = (dist_new − dist_old) / dist_old "
             "is undefined where dist_old = 0 and such facts are left out of the RD mean. A bad case has "
             "accuracy < 1 or dist(y_new, y_t) > 0. A bad case whose y_new is empty has no distance: it stays "
             "among the bad cases but cannot count as a deviation, so the column 'Empty y_new' says how many "
             "bad cases could not be measured (the deviation share is a lower bound by that many).")  # fmt: skip
    sec.blocks.append(ctx.figure("fig4", path, "Figure 4: deviation share and mean RD per target-distance bin."))
    table1 = an.deviation_among_bad(records, group)
    rows = [[*(an.fmt_value(r[c]) for c in group), str(r["n_trials"]), str(r["n_bad"]), str(r["n_empty_bad"]),
             _pct(r["share"]), _pct(r["deviation_rate"])] for _, r in table1.iterrows()]  # fmt: skip
    sec.blocks.append(Table(
        "Table 1. Proportion of the deviation phenomenon in bad cases (%) [95% bootstrap CI over trials].",
        [*(c.capitalize() for c in group), "Trials", "Bad cases", "Empty y_new", "Deviation among bad cases (%)",
         "Deviation, all facts (%)"],
        rows,
    ))  # fmt: skip
    rd_rows = [
        [r["series"], _bin_label(r), str(r["dev_n_facts"]),
         fmt_ci(Estimate(r["dev_estimate"], r["dev_low"], r["dev_high"]), PCT),
         fmt_ci(Estimate(r.get("rd_estimate", np.nan), r.get("rd_low", np.nan), r.get("rd_high", np.nan)), 1.0, 3)]
        for _, r in binned.sort_values(["series", "bin"]).iterrows()
    ]  # fmt: skip
    sec.blocks.append(Table("Figure 4 data: deviation share (%) and mean RD per distance bin.",
                            ["Series", "Distance bin", "Facts", "Deviation (%)", "Mean RD"], rd_rows))  # fmt: skip
    return sec


def _fig6(ctx: _Context) -> Section | str:
    trials = an.plain(ctx.data.ok)
    trials = trials[(trials["k"] > 1)]
    if trials.empty or "dist_mean" not in trials or trials["dist_mean"].isna().all():
        return "no plain multi-fact (k > 1) trials with distance statistics"
    group = ["model", "method", *an.varying(trials, ["dataset", "k"])]
    trials = _with_labels(trials, [], group)
    path = figs.accuracy_vs_set_statistics(trials, "series", ctx.fig_dir / "fig6_accuracy_vs_mean_variance.png")
    stats = an.set_statistics(trials, ["series"])
    rows = [[r["series"], str(r["n_trials"]), _pct(r["accuracy"]), fmt_ci(r["r_mean"], 1.0, 3), fmt_ci(r["r_var"], 1.0, 3)]
            for _, r in stats.iterrows()]  # fmt: skip
    sec = Section("fig6", "Figure 6: accuracy vs mean and variance of the set's distances")
    sec.blocks.append(ctx.figure("fig6", path, "Figure 6: trial accuracy vs mean (a) and variance (b) of target distances."))
    sec.blocks.append(Table(
        "Figure 6 data: Pearson correlation of trial accuracy with the set's mean and variance of target distance "
        "[95% bootstrap CI over trials].",
        ["Series", "Trials", "Accuracy (%)", "r(accuracy, mean)", "r(accuracy, variance)"], rows,
    ))  # fmt: skip
    return sec


def _table2(ctx: _Context) -> Section | str:
    frob = ctx.data.frobenius
    if frob.empty:
        return "no trial logged analysis/frobenius.json"
    frob = frob[frob["run_id"].isin(an.plain(ctx.data.ok)["run_id"])]
    if frob.empty:
        return "no plain (γ = 0, no filter) trial logged analysis/frobenius.json"
    sec = Section("table2", "Table 2: Frobenius-norm analysis of ΔW_q")
    sec.text("Plain trials only (γ = 0, no data filter), one table per model and method. Trials are split by "
             "their mean target distance into three equal-width segments of the observed range (short / medium "
             "/ long); each cell is the mean over the trials of that segment.")  # fmt: skip
    for key, part in frob.groupby(["model", "method"], dropna=False, sort=True):
        table, edges = an.frobenius_by_third(part, [k for k, _ in FROBENIUS_ROWS])
        if table.empty:
            continue
        first = table.iloc[0]
        heads = [f"{band.capitalize()} [{lo:.3f}, {hi:.3f}{']' if band == 'long' else ')'}, n={first[f'n_{band}']}"
                 for band, lo, hi in zip(an.BANDS, edges[:-1], edges[1:])]  # fmt: skip
        names = dict(FROBENIUS_ROWS)
        rows = [[names[r["quantity"]], *(fmt_ci(r[b], 1.0, 4) for b in an.BANDS)] for _, r in table.iterrows()]
        layers = ", ".join(map(an.fmt_value, sorted(part["layer"].dropna().unique()))) if "layer" in part else "—"
        ranks = ", ".join(map(an.fmt_value, sorted(part["rank"].dropna().unique()))) if "rank" in part else "—"
        sec.blocks.append(Table(
            f"Table 2 ({an.fmt_value(key[0])} / {an.fmt_value(key[1])}, layer {layers}, rank r = {ranks}): "
            "Frobenius norms by mean target distance [95% bootstrap CI over trials].",
            ["Norm", *heads], rows,
        ))  # fmt: skip
    return sec


def _fig5(ctx: _Context) -> Section | str:
    features = ctx.data.features
    if not features:
        return "no trial logged analysis/features.npz"
    plain = an.plain(ctx.data.ok)
    model_of = {r: f"{an.fmt_value(m)} / {an.fmt_value(t)}" for r, m, t in zip(plain["run_id"], plain["model"], plain["method"])}
    by_model: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for run_id, feats in features.items():
        if run_id in model_of:
            by_model.setdefault(model_of[run_id], {})[run_id] = feats
    by_model = {m: f for m, f in by_model.items() if sum(len(x["dist_old"]) for x in f.values()) >= 2}
    if not by_model:
        return "fewer than 2 facts with logged features per model and method in plain (γ = 0, no filter) trials"
    points = {model: an.feature_pca(feats) for model, feats in by_model.items()}
    path = figs.feature_pca(points, ctx.fig_dir / "fig5_feature_pca.png")
    sec = Section("fig5", "Figure 5: PCA of knowledge features by distance band")
    sec.text("Last-layer hidden state of the final prompt token of each test fact, pooled over the plain trials "
             f"(γ = 0, no filter) of a model and method (at most {FEATURE_TRIALS_PER_MODEL} per model) and projected on its first 15 principal "
             "components. Spread = total variance of a band's points in that space; norm = mean distance from "
             "the centre; both per trial, then averaged over trials.")  # fmt: skip
    sec.blocks.append(ctx.figure("fig5", path, "Figure 5: features on PC1/PC2 by band, and variance per component."))
    for model, (pts, _) in sorted(points.items()):
        spread = an.pca_spread(pts)
        rows = [[r["band"], str(r["n_points"]), str(r["n_trials"]), fmt_ci(r["spread"], 1.0, 3), fmt_ci(r["norm"], 1.0, 3)]
                for _, r in spread.iterrows()]  # fmt: skip
        sec.blocks.append(Table(f"Figure 5 data ({model}): feature spread per distance band [95% bootstrap CI over trials].",
                                ["Band", "Facts", "Trials", "Spread", "Mean norm"], rows))  # fmt: skip
    return sec


def _fig7(ctx: _Context) -> Section | str:
    ok = ctx.data.ok
    trials = ok[ok["filter_mode"].isin(["filter", "random"])]
    if trials.empty:
        return "no data-filtering trials (filter_mode filter / random)"
    series_cols = an.varying(trials, ["model", "method", "k", "gamma", "filter_lambda", *an.SETTING_COLUMNS])
    trials = _with_labels(trials, ["dataset"], series_cols)
    effect = an.filter_effect(trials, ["panel", "series"])
    # Baseline: plain trials of the same dataset, model, method and k, without any replacement.
    same = ["dataset", "model", "method", "k"]
    base = an.plain(ok).merge(trials[same].drop_duplicates(), on=same)
    base = _with_labels(base, ["dataset"], series_cols)
    baselines = {key: float(g["accuracy"].mean()) for key, g in base.groupby(["panel", "series"])}
    path = figs.filter_vs_random(effect, baselines, ctx.fig_dir / "fig7_filter_vs_random.png")
    rows = [[r["panel"], r["series"], an.fmt_value(r["replace"]), f"{_pct(r['filter'])} (n={r['n_filter']})",
             f"{_pct(r['random'])} (n={r['n_random']})", _pp(r["delta"]), _p(r["delta"]), str(r["delta"]["n_pairs"]),
             _share(r["delta"]["share_b_greater"])]
            for _, r in effect.sort_values(["panel", "series", "replace"]).iterrows()]  # fmt: skip
    sec = Section("fig7", "Figure 7: data filtering vs random replacement")
    sec.text("Accuracy on the original (test) facts after replacing a share ρ of the training facts, either by "
             "the greedy semantic filter of Eq. 4 or at random. The paired delta compares the two at the same "
             "sampling and seed.")  # fmt: skip
    sec.blocks.append(ctx.figure("fig7", path, "Figure 7: accuracy vs replaced share ρ; dashed lines: no replacement."))
    sec.blocks.append(Table(
        "Figure 7 data: accuracy (%) per ρ and the paired difference filter − random (percentage points) [95% bootstrap CI].",
        ["Dataset", "Series", "ρ", "Filter (%)", "Random (%)", "Δ filter − random (pp)", "p", "Pairs", "Filter better"], rows,
    ))  # fmt: skip
    sec.text("Whole-K accuracy is capped at the retained share: a replaced fact is never trained. The split below "
             "separates the cap from interference: accuracy on the retained test facts (trained), on the replaced "
             "ones (not trained) and on every trained fact (retained and added), with the mean number of retained "
             "and replaced test facts per trial. The filter keeps test facts without a target distance (empty "
             "y_old) outside the filter, so a few are retained even at ρ = 1.")  # fmt: skip
    split = an.split_by_training(trials, ["panel", "series"])
    retained = an.filter_effect(trials, ["panel", "series"], "retained_accuracy").set_index(["panel", "series", "replace"])
    rows = []
    for _, r in split.sort_values(["panel", "series", "replace", "filter_mode"]).iterrows():
        delta = retained.loc[(r["panel"], r["series"], r["replace"]), "delta"] if r["filter_mode"] == "filter" else None
        rows.append([r["panel"], r["series"], an.fmt_value(r["replace"]), r["filter_mode"], str(r["n_trials"]),
                     _count(r["n_retained"]), _count(r["n_replaced"]), _pct(r["accuracy"]), _pct(r["retained_accuracy"]),
                     _pct(r["replaced_accuracy"]), _pct(r["trained_accuracy"]),
                     f"{_pp(delta)} (p {_p(delta)}, {delta['n_pairs']} pairs)" if delta and delta["n_pairs"] else "—"])  # fmt: skip
    sec.blocks.append(Table(
        "Figure 7, split by what was trained: accuracy (%) per selection and ρ [95% bootstrap CI]; Δ retained: "
        "paired filter − random on retained accuracy (pp).",
        ["Dataset", "Series", "ρ", "Selection", "Trials", "Retained facts", "Replaced facts", "Whole K (%)",
         "Retained (%)", "Replaced (%)", "Trained (%)", "Δ retained (pp)"], rows,
    ))  # fmt: skip
    return sec


def _count(value: float) -> str:
    """A mean count per trial; — when the trials did not log it."""
    return "—" if np.isnan(value) else f"{value:.1f}"


def _tables3_4(ctx: _Context) -> Section | str:
    ok = ctx.data.ok
    trials = ok[ok["filter_mode"].fillna("none") == "none"]
    if trials["gamma"].nunique() < 2 or not (trials["gamma"] == 0).any():
        return "needs unfiltered trials at γ = 0 and at least one γ > 0"
    metrics = [m for m in ("accuracy", "generality", "locality", "locality_soft") if m in trials and trials[m].notna().any()]
    group = ["dataset", "model", "method", "k", *an.varying(trials, an.SETTING_COLUMNS)]
    levels, deltas = an.gamma_effect(trials, group, metrics)
    heads = [c if c in ("k", "lr") else c.capitalize() for c in group]
    rows = [[*(an.fmt_value(r[c]) for c in group), an.fmt_value(r["gamma"]), str(r["n_trials"]), *(_pct(r[m]) for m in metrics)]
            for _, r in levels.iterrows()]  # fmt: skip
    sec = Section("tables3_4", "Tables 3–4: re-weighted loss (γ) vs plain training")
    optimizer = trials["optimizer"].fillna("adamw") if "optimizer" in trials else pd.Series("adamw", index=trials.index)
    lone = trials[(trials["k"] == 1) & (optimizer == "adamw") & (trials["gamma"] > 0)]
    if not lone.empty:
        sec.text(f"Warning: {len(lone)} trials apply γ > 0 to a single fact under AdamW. AdamW cancels a constant "
                 "factor on a lone fact's loss, so γ cannot change such a trial: their deltas are 0 by construction "
                 "and say nothing about the re-weighted loss. Use multi-fact sets, or optimizer: sgd.")  # fmt: skip
    sec.text("Locality is Eq. 8 (the tuned greedy answer equals the base one); soft locality is the mean of "
             "1 − dist(base answer, tuned answer) over the unrelated prompts, so a change of answer style costs "
             "less than a change of meaning.")  # fmt: skip
    sec.blocks.append(Table(
        "Tables 3–4. Accuracy, generality and locality (%) per γ: γ = 0 is the original training (Table 4), "
        "γ > 0 the re-weighted loss of Eq. 5 (Table 3). Mean over trials [95% bootstrap CI over trials].",
        [*heads, "γ", "Trials", *(f"{SCALED_METRICS[m]} (%)" for m in metrics)], rows,
    ))  # fmt: skip
    if not deltas.empty:
        rows = [[*(an.fmt_value(r[c]) for c in group), an.fmt_value(r["gamma"]), str(r[metrics[0]]["n_pairs"]),
                 *(_pp(r[m]) for m in metrics), _p(r[metrics[0]]), _share(r["accuracy"]["share_b_greater"]) if "accuracy" in metrics else "—"]
                for _, r in deltas.iterrows()]  # fmt: skip
        sec.blocks.append(Table(
            "Table 3 (paired deltas). Change vs γ = 0 in percentage points, paired over trials with the same "
            "(sampling, seed, k, method): mean difference [95% bootstrap CI over pairs]; p: two-sided sign-flip "
            f"permutation test of the first metric ({SCALED_METRICS[metrics[0]].lower()}).",
            [*heads, "γ", "Pairs", *(f"Δ {SCALED_METRICS[m]} (pp)" for m in metrics), "p", "Accuracy improved in"], rows,
        ))  # fmt: skip
    return sec


def _sweep(ctx: _Context) -> Section | str | None:
    """The search and its confirmation; None (no section, nothing skipped) for a grid study."""
    spec = ctx.spec
    search = spec.get("search") or {}
    if search.get("algorithm", "grid") == "grid":
        return None
    objective = ctx.data.parents[-1].data.params.get("objective", "accuracy")  # StudySpec.objective, as logged
    mode = search.get("mode", "max")
    ok = ctx.data.ok
    phase = ok["phase"].fillna("search") if "phase" in ok else pd.Series("search", index=ok.index)
    trials = ok[phase == "search"].sort_values("start_time")
    swept = [p for p in spec.get("sweep", {}) if p in trials and trials[p].notna().any()]
    if trials.empty or objective not in trials or not swept:
        return f"no search trials with the objective {objective} and swept parameters"
    path = figs.sweep_progress(trials, objective, swept, ctx.fig_dir / "sweep_search.png")
    sec = Section("sweep", f"Sweep: {search['algorithm']} search for the best {objective}")
    sec.blocks.append(ctx.figure("sweep", path, f"Search: {objective} per trial in search order with the running best (a); "
                                 f"{objective} over {' × '.join(swept[:2])} (b)."))  # fmt: skip
    importances = an.param_importances(trials, objective, swept, mode)
    if importances:
        sec.blocks.append(Table("Optuna parameter importances (fANOVA) of the search trials.", ["Parameter", "Importance"],
                                [[p, f"{v:.3f}"] for p, v in importances.items()]))  # fmt: skip
    confirm = ok[phase == "confirm"]
    if confirm.empty:
        sec.text(f"Confirmation skipped: the best point's {objective} below comes from the samplings it was "
                 "chosen on, so it is optimistic by construction.")  # fmt: skip
        ctx.notes.append(f"sweep not confirmed: the best {objective} is the search's own (optimistic) number")
        best = trials.loc[trials[objective].idxmax() if mode == "max" else trials[objective].idxmin()]
        sec.text(f"Best searched point: {an.label(best, swept)}, {objective} {an.fmt_value(float(best[objective]))} (n = 1, no CI).")
        return sec
    base_mask = np.ones(len(confirm), dtype=bool)
    for p in ("gamma", "filter_lambda"):
        if p in confirm:
            base_mask &= confirm[p].fillna(0.0).to_numpy() == 0.0
    baseline, best = confirm[base_mask], confirm[~base_mask]
    if best.empty:
        best = baseline
    by_sampling = {name: dict(zip(part["sampling"], part[objective])) for name, part in (("best", best), ("baseline", baseline))}
    delta = an.paired_difference(by_sampling["baseline"], by_sampling["best"])
    point = an.label(best.iloc[0], swept)
    sec.text(f"Best point (chosen by the search): {point}. Confirmed on {best['sampling'].nunique()} samplings the search "
             "never saw, paired with the baseline (γ = 0, λ = 0) on the same samplings and seeds.")  # fmt: skip
    sec.blocks.append(Table(
        f"Confirmation: {objective} (%) on the confirmation samplings [95% bootstrap CI over samplings] and the paired "
        "difference best − baseline (percentage points) with its sign-flip p.",
        ["Point", "Samplings", f"{objective} (%)", "Baseline (%)", "Δ best − baseline (pp)", "p"],
        [[point, str(delta["n_pairs"]), _pct(an.metric_ci(best[objective])), _pct(an.metric_ci(baseline[objective])),
          _pp(delta), _p(delta)]],
    ))  # fmt: skip
    return sec


def _logged_spec(data: StudyData) -> dict[str, Any]:
    """The spec JSON of the latest parent run ({} when there is none or it does not parse)."""
    for parent in reversed(data.parents):
        try:
            return json.loads(parent.data.params.get("spec", ""))
        except ValueError:
            continue
    return {}


def _fig8(ctx: _Context) -> Section | str:
    records = ctx.data.records
    if records.empty:
        return "no per-fact records"
    records = an.plain(records)
    if records["k"].nunique() < 2:
        return "needs plain trials with at least two fact quantities k"
    panel = ["model", "method", *an.varying(records, ["dataset"])]
    records = _with_labels(records, panel, ["k"])
    binned = an.accuracy_by_distance(records, ["panel", "series"])
    path = figs.accuracy_vs_distance(binned, "facts per trial", ctx.fig_dir / "fig8_accuracy_by_quantity.png",
                                     "Figure 8: accuracy vs target semantic distance per number of facts k")  # fmt: skip
    sec = Section("fig8", "Figure 8: learning different quantities of knowledge")
    sec.blocks.append(ctx.figure("fig8", path, "Figure 8: accuracy per distance bin for each number of facts per trial."))
    sec.blocks.append(_binned_table(binned, "Figure 8 data: accuracy per distance bin and k (%)."))
    return sec


def _table5(ctx: _Context) -> Section | str:
    records = ctx.data.records
    if records.empty:
        return "no per-fact records"
    examples = an.example_responses(records)
    if examples.empty:
        return "no fact falls in the short / medium / long bands"
    rows = [[r["band"], an.fmt_value(r["model"]), f"{r['dist_old']:.3f}", r["prompt"], r["target"], r["y_old"],
             r["y_new"], "yes" if r["exact_match"] >= 1 else "no"] for _, r in examples.iterrows()]  # fmt: skip
    sec = Section("table5", "Table 5: example responses per distance band")
    sec.blocks.append(Table(
        "Table 5. Responses before (y_old) and after (y_new) tuning; bands short 0.1–0.3, medium 0.3–0.6, long 0.6–1.0.",
        ["Band", "Model", "dist(y_old, y_t)", "Prompt", "Target", "y_old", "y_new", "Correct"], rows,
    ))  # fmt: skip
    return sec


def _compare(ctx: _Context, other: StudyData) -> Section:
    a, b = ctx.data.ok, other.ok
    columns = an.varying(pd.concat([a, b], ignore_index=True), an.CONFIG_COLUMNS)
    metrics = [m for m in ("accuracy", "generality", "locality") if m in a and m in b]
    table = an.compare_configs(a, b, columns, metrics)
    sec = Section("compare", f"Comparison with {other.experiment}")
    sec.text(f"A = {ctx.data.experiment} ({len(a)} trials), B = {other.experiment} ({len(b)} trials). "
             "Δ = B − A in percentage points; paired over (sampling, seed) where the two studies share them, "
             "otherwise an unpaired bootstrap of the difference of means.")  # fmt: skip
    if table.empty:
        sec.text("The two experiments share no configuration, so nothing is compared directly.")
        return sec
    rows = [[r["config"], SCALED_METRICS[r["metric"]], f"{_pct(r['a'])} (n={r['n_a']})", f"{_pct(r['b'])} (n={r['n_b']})",
             fmt_ci(r["delta"], PCT, signed=True), r["how"]] for _, r in table.iterrows()]  # fmt: skip
    sec.blocks.append(Table(f"Headline metrics of {ctx.data.experiment} (A) and {other.experiment} (B) [95% bootstrap CI].",
                            ["Configuration", "Metric", "A (%)", "B (%)", "Δ B − A (pp)", "Difference"], rows))  # fmt: skip
    return sec


SECTIONS: tuple[tuple[str, Callable[[_Context], Section | str | None]], ...] = (
    ("fig3", _fig3),
    ("fig4_table1", _fig4_table1),
    ("fig6", _fig6),
    ("table2", _table2),
    ("fig5", _fig5),
    ("fig7", _fig7),
    ("tables3_4", _tables3_4),
    ("fig8", _fig8),
    ("sweep", _sweep),
    ("table5", _table5),
)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def headline_metrics(head: dict[str, dict[str, Any]]) -> list:
    """The headline as MLflow metrics of the parent run, comparable across studies in the MLflow UI:
    ``<metric>.<configuration>`` (mean) with ``.ci_low`` / ``.ci_high``, and ``n_trials.<configuration>``."""
    from mlflow.entities import Metric

    now, out = int(datetime.now(timezone.utc).timestamp() * 1000), []
    for label, entry in head.items():
        config = " ".join(re.sub(r"[^\w.\-]+", "", part.replace("=", "_")) for part in label.split(" · ")).strip() or "all"
        out.append(Metric(f"n_trials.{config}", float(entry["n_trials"]), now, 0))
        for metric, est in entry.items():
            if isinstance(est, Estimate):
                for suffix, value in (("", est.estimate), (".ci_low", est.low), (".ci_high", est.high)):
                    if np.isfinite(value):
                        out.append(Metric(f"{metric}.{config}{suffix}", float(value), now, 0))
    return out


def build_report(
    experiment: str,
    tracking_uri: str | None = None,
    out_dir: Path | None = None,
    compare: str | None = None,
    log_to_mlflow: bool = True,
) -> ReportSummary:
    """Read the experiment, write figures + ``report.md`` + ``report.html`` to ``out_dir``, log them.

    ``out_dir`` defaults to ``reports/<experiment>`` under the working folder. ``compare`` names a
    second experiment whose headline metrics are set beside this one's. Raises ``ReportError``
    for an unknown experiment or one without trial runs.
    """
    client = open_client(tracking_uri)
    data = load_study(client, experiment)
    other = load_study(client, compare, with_artifacts=False) if compare else None

    out = Path(out_dir) if out_dir is not None else Path.cwd() / "reports" / _slug(experiment)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    ctx = _Context(data, fig_dir, spec=_logged_spec(data))

    columns = an.varying(data.ok, an.CONFIG_COLUMNS)
    overview, head = _overview(ctx, columns)
    sections, skipped = [overview], {}
    for key, make in SECTIONS:
        result = make(ctx) if not data.ok.empty else "no finished trial"
        if result is None:
            continue
        if isinstance(result, str):
            skipped[key] = result
        else:
            sections.append(result)
    if other is not None:
        sections.append(_compare(ctx, other))
    if skipped:
        sections.append(Section("skipped", "Not produced").text(
            "; ".join(f"{key}: {reason}" for key, reason in skipped.items()) + "."
        ))  # fmt: skip

    title = f"raysem report: {experiment}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    preamble = [*(f"Note: {note}." for note in ctx.notes), f"Experiment {experiment} at {client.tracking_uri}; generated {stamp}. "
                "Numbers are means over trials with 95% bootstrap intervals over trials in brackets: BCa "
                "(bias-corrected and accelerated, scipy.stats.bootstrap, 2,000 resamples), or percentile where BCa is "
                "undefined; paired deltas carry a two-sided sign-flip permutation test (p)."]  # fmt: skip
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(title, preamble, sections, out), encoding="utf-8")
    html_path.write_text(render_html(title, preamble, sections), encoding="utf-8")
    data.trials.to_csv(out / "trials.csv", index=False)

    summary = ReportSummary(
        experiment=experiment, out_dir=out, markdown=md_path, html=html_path,
        sections=[s.key for s in sections if s.key != "skipped"], skipped=skipped, figures=dict(ctx.figures),
        headline=head, n_trials=len(data.trials), n_failed=int(data.trials["failed"].sum()),
        n_duplicates=data.duplicates, parent_run_ids=[p.info.run_id for p in data.parents], compare=compare,
        notes=list(ctx.notes),
    )  # fmt: skip
    if log_to_mlflow:
        if data.parents:
            summary.logged_run_id = data.parents[-1].info.run_id
            client.log_artifacts(summary.logged_run_id, str(out), artifact_path="report")
            client.log_batch(summary.logged_run_id, metrics=headline_metrics(head))
        else:
            summary.notes.append("no parent study run in the experiment; the report was not logged to MLflow")
    return summary
