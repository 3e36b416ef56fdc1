"""The paper's remedies: data filtering (Figure 7), the re-weighted loss (Tables 3–4), and a searched sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysem.report import analysis as an
from raysem.report import figures as figs
from raysem.report.captions import CAPTIONS
from raysem.report.format import SCALED_METRICS, count, p_value, pct, pp, share, with_labels
from raysem.report.render import Section, Table
from raysem.report.sections.context import Context


def fig7(ctx: Context) -> Section | str:
    ok = ctx.data.ok
    trials = ok[ok["filter_mode"].isin(["filter", "random"])]
    if trials.empty:
        return "no data-filtering trials (filter_mode filter / random)"
    series_cols = an.varying(trials, ["model", "method", "k", "gamma", *an.FILTER_ONLY, *an.SETTING_COLUMNS])
    trials = with_labels(an.share_random_arm(trials, series_cols), ["dataset"], series_cols)
    effect = an.filter_effect(trials, ["panel", "series"])
    # Baseline: plain trials of the same dataset, model, method and k, without any replacement.
    same = ["dataset", "model", "method", "k"]
    base = an.plain(ok).merge(trials[same].drop_duplicates(), on=same)
    base = with_labels(base, ["dataset"], series_cols)
    baselines = {key: float(g["accuracy"].mean()) for key, g in base.groupby(["panel", "series"])}
    path = figs.filter_vs_random(effect, baselines, ctx.fig_dir / "fig7_filter_vs_random.png")
    rows = [
        [
            r["panel"],
            r["series"],
            an.fmt_value(r["replace"]),
            f"{pct(r['filter'])} (n={r['n_filter']})",
            f"{pct(r['random'])} (n={r['n_random']})",
            pp(r["delta"]),
            p_value(r["delta"]),
            str(r["delta"]["n_pairs"]),
            share(r["delta"]["share_b_greater"]),
        ]
        for _, r in effect.sort_values(["panel", "series", "replace"]).iterrows()
    ]
    sec = Section("fig7", "Figure 7: data filtering vs random replacement")
    sec.text(CAPTIONS["fig7.1"])
    sec.blocks.append(ctx.figure("fig7", path, CAPTIONS["fig7.2"]))
    sec.blocks.append(
        Table(
            CAPTIONS["fig7.3"],
            [
                "Dataset",
                "Series",
                "ρ",
                "Filter (%)",
                "Random (%)",
                "Δ filter − random (pp)",
                "p",
                "Pairs",
                "Filter better",
            ],
            rows,
        )
    )
    sec.text(CAPTIONS["fig7.4"])
    split = an.split_by_training(trials, ["panel", "series"])
    retained = an.filter_effect(trials, ["panel", "series"], "retained_accuracy").set_index(
        ["panel", "series", "replace"]
    )
    rows = []
    for _, r in split.sort_values(["panel", "series", "replace", "filter_mode"]).iterrows():
        delta = retained.loc[(r["panel"], r["series"], r["replace"]), "delta"] if r["filter_mode"] == "filter" else None
        rows.append(
            [
                r["panel"],
                r["series"],
                an.fmt_value(r["replace"]),
                r["filter_mode"],
                str(r["n_trials"]),
                count(r["n_retained"]),
                count(r["n_replaced"]),
                an.fmt_value(r["train_dist_mean"]),
                an.fmt_value(r["train_dist_var"]),
                pct(r["accuracy"]),
                pct(r["retained_accuracy"]),
                pct(r["replaced_accuracy"]),
                pct(r["trained_accuracy"]),
                f"{pp(delta)} (p {p_value(delta)}, {delta['n_pairs']} pairs)" if delta and delta["n_pairs"] else "—",
            ]
        )
    sec.blocks.append(
        Table(
            CAPTIONS["fig7.5"],
            [
                "Dataset",
                "Series",
                "ρ",
                "Selection",
                "Trials",
                "Retained facts",
                "Replaced facts",
                "Set mean",
                "Set var",
                "Whole K (%)",
                "Retained (%)",
                "Replaced (%)",
                "Trained (%)",
                "Δ retained (pp)",
            ],
            rows,
        )
    )
    return sec


def tables3_4(ctx: Context) -> Section | str:
    ok = ctx.data.ok
    trials = ok[ok["filter_mode"].fillna("none") == "none"]
    if trials["gamma"].nunique() < 2 or not (trials["gamma"] == 0).any():
        return "needs unfiltered trials at γ = 0 and at least one γ > 0"
    metrics = [
        m for m in ("accuracy", "generality", "locality", "locality_soft") if m in trials and trials[m].notna().any()
    ]
    group = ["dataset", "model", "method", "k", *an.varying(trials, an.SETTING_COLUMNS)]
    levels, deltas = an.gamma_effect(trials, group, metrics)
    heads = [c if c in ("k", "lr") else c.capitalize() for c in group]
    rows = [
        [
            *(an.fmt_value(r[c]) for c in group),
            an.fmt_value(r["gamma"]),
            str(r["n_trials"]),
            *(pct(r[m]) for m in metrics),
        ]
        for _, r in levels.iterrows()
    ]
    sec = Section("tables3_4", "Tables 3–4: re-weighted loss (γ) vs plain training")
    optimizer = trials["optimizer"].fillna("adamw") if "optimizer" in trials else pd.Series("adamw", index=trials.index)
    lone = trials[(trials["k"] == 1) & (optimizer == "adamw") & (trials["gamma"] > 0)]
    if not lone.empty:
        sec.text(
            f"Warning: {len(lone)} trials apply γ > 0 to a single fact under AdamW. AdamW cancels a constant "
            "factor on a lone fact's loss, so γ cannot change such a trial: their deltas are 0 by construction "
            "and say nothing about the re-weighted loss. Use multi-fact sets, or optimizer: sgd."
        )
    sec.text(CAPTIONS["tables3_4.1"])
    sec.blocks.append(
        Table(
            CAPTIONS["tables3_4.2"],
            [*heads, "γ", "Trials", *(f"{SCALED_METRICS[m]} (%)" for m in metrics)],
            rows,
        )
    )
    if not deltas.empty:
        rows = [
            [
                *(an.fmt_value(r[c]) for c in group),
                an.fmt_value(r["gamma"]),
                str(r[metrics[0]]["n_pairs"]),
                *(pp(r[m]) for m in metrics),
                p_value(r[metrics[0]]),
                share(r["accuracy"]["share_b_greater"]) if "accuracy" in metrics else "—",
            ]
            for _, r in deltas.iterrows()
        ]
        sec.blocks.append(
            Table(
                "Table 3 (paired deltas). Change vs γ = 0 in percentage points, paired over trials with the same "
                "(sampling, seed, k, method): mean difference [95% bootstrap CI over pairs]; p: two-sided sign-flip "
                f"permutation test of the first metric ({SCALED_METRICS[metrics[0]].lower()}).",
                [*heads, "γ", "Pairs", *(f"Δ {SCALED_METRICS[m]} (pp)" for m in metrics), "p", "Accuracy improved in"],
                rows,
            )
        )
    records = ctx.data.records
    if not deltas.empty and {"run_id", "dist_old", "exact_match"} <= set(records.columns):
        split = an.accuracy_by_lambda(records[records["run_id"].isin(trials["run_id"])])
        _, by_lambda = an.gamma_effect(trials.join(split, on="run_id"), group, ["accuracy_extreme", "accuracy_medium"])
        counts = split[["facts_extreme", "facts_medium"]].sum()
        rows = [
            [
                *(an.fmt_value(r[c]) for c in group),
                an.fmt_value(r["gamma"]),
                str(r["accuracy_extreme"]["n_pairs"]),
                pp(r["accuracy_extreme"]),
                p_value(r["accuracy_extreme"]),
                pp(r["accuracy_medium"]),
                p_value(r["accuracy_medium"]),
            ]
            for _, r in by_lambda.iterrows()
        ]
        sec.blocks.append(
            Table(
                f"Table 3 by λ. Accuracy change vs γ = 0 (pp), paired as above, within each trial's extreme-distance "
                f"facts (λ_i > {an.EXTREME_LAMBDA:g}: dist_old below ≈ 0.27 or above ≈ 0.73, the facts Eq. 5 weighs "
                f"most; {int(counts['facts_extreme']):,} fact records) and its other facts "
                f"({int(counts['facts_medium']):,}). Under AdamW a weight cannot act as a larger step, only move "
                "weight between a batch's facts: this split shows where it moved.",
                [*heads, "γ", "Pairs", "Δ extreme (pp)", "p", "Δ medium (pp)", "p"],
                rows,
            )
        )
    return sec


def sweep(ctx: Context) -> Section | str | None:
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
    sec.blocks.append(
        ctx.figure(
            "sweep",
            path,
            f"Search: {objective} per trial in search order with the running best (a); "
            f"{objective} over {' × '.join(swept[:2])} (b).",
        )
    )
    importances = an.param_importances(trials, objective, swept, mode)
    if importances:
        sec.blocks.append(
            Table(CAPTIONS["sweep"], ["Parameter", "Importance"], [[p, f"{v:.3f}"] for p, v in importances.items()])
        )
    confirm = ok[phase == "confirm"]
    if confirm.empty:
        sec.text(
            f"Confirmation skipped: the best point's {objective} below comes from the samplings it was "
            "chosen on, so it is optimistic by construction."
        )
        ctx.notes.append(f"sweep not confirmed: the best {objective} is the search's own (optimistic) number")
        best = trials.loc[trials[objective].idxmax() if mode == "max" else trials[objective].idxmin()]
        sec.text(
            f"Best searched point: {an.label(best, swept)}, {objective} {an.fmt_value(float(best[objective]))} (n = 1, no CI)."
        )
        return sec
    base_mask = np.ones(len(confirm), dtype=bool)
    for p in ("gamma", "filter_lambda"):
        if p in confirm:
            base_mask &= confirm[p].fillna(0.0).to_numpy() == 0.0
    baseline, best = confirm[base_mask], confirm[~base_mask]
    if best.empty:
        best = baseline
    by_sampling = {
        name: dict(zip(part["sampling"], part[objective])) for name, part in (("best", best), ("baseline", baseline))
    }
    delta = an.paired_difference(by_sampling["baseline"], by_sampling["best"])
    point = an.label(best.iloc[0], swept)
    sec.text(
        f"Best point (chosen by the search): {point}. Confirmed on {best['sampling'].nunique()} samplings the search "
        "never saw, paired with the baseline (γ = 0, λ = 0) on the same samplings and seeds."
    )
    sec.blocks.append(
        Table(
            f"Confirmation: {objective} (%) on the confirmation samplings [95% bootstrap CI over samplings] and the paired "
            "difference best − baseline (percentage points) with its sign-flip p.",
            ["Point", "Samplings", f"{objective} (%)", "Baseline (%)", "Δ best − baseline (pp)", "p"],
            [
                [
                    point,
                    str(delta["n_pairs"]),
                    pct(an.metric_ci(best[objective])),
                    pct(an.metric_ci(baseline[objective])),
                    pp(delta),
                    p_value(delta),
                ]
            ],
        )
    )
    return sec
