"""The paper's findings on knowledge learning: Figures 3–6 and 8, Tables 1, 2 and 5."""

from __future__ import annotations

import numpy as np

from raysem.report import analysis as an
from raysem.report import figures as figs
from raysem.report.captions import CAPTIONS
from raysem.report.data import FEATURE_TRIALS_PER_MODEL
from raysem.report.format import PCT, bin_label, binned_table, pct, with_labels
from raysem.report.render import Section, Table, fmt_ci
from raysem.report.sections.context import Context
from raysem.report.stats import Estimate

FROBENIUS_ROWS = (
    ("W_fro", "‖W_q‖_F"),
    ("dW_fro", "‖ΔW_q‖_F"),
    ("proj_dW_fro", "‖UᵀW_qV‖_F, U,V: top-r directions of ΔW_q"),
    ("proj_W_fro", "‖UᵀW_qV‖_F, U,V: top-r directions of W_q"),
    ("proj_random_fro", "‖UᵀW_qV‖_F, U,V: random orthonormal"),
    ("amplification", "amplification ‖ΔW_q‖_F / ‖UᵀW_qV‖_F (ΔW_q directions)"),
)


def fig3(ctx: Context) -> Section | str:
    records = an.plain(ctx.data.records) if not ctx.data.records.empty else ctx.data.records
    if records.empty:
        return "no per-fact records of plain trials (γ = 0, no data filtering)"
    multi = records[records["k"] > 1]
    scope = "multi-fact trials (k > 1)" if not multi.empty else "all plain trials"
    records = multi if not multi.empty else records
    records = with_labels(records, ["model", *an.varying(records, ["dataset"])], ["method"])
    binned = an.accuracy_by_distance(records, ["panel", "series"])
    path = figs.accuracy_vs_distance(
        binned,
        "method",
        ctx.fig_dir / "fig3_accuracy_vs_distance.png",
        f"Figure 3: accuracy vs target semantic distance ({scope}, γ = 0)",
    )
    sec = Section("fig3", "Figure 3: accuracy vs target semantic distance")
    sec.text(
        f"Per-fact exact-match accuracy pooled over the facts of {scope} trained without re-weighting "
        "or filtering, in bins of width 0.1 of dist(y_old, y_t) (clipped to [0, 1]); the interval "
        "resamples trials. Facts whose base answer was empty have no distance and are not binned."
    )
    sec.blocks.append(ctx.figure("fig3", path, CAPTIONS["fig3.1"]))
    sec.blocks.append(binned_table(binned, "Figure 3 data: accuracy per distance bin (%)."))
    records = records.assign(kind=records["target"].map(an.target_kind))
    strata = [("all", records), *((kind, records[records["kind"] == kind]) for kind in an.TARGET_KINDS)]
    band_rows, decile_rows = [], []
    for metric, name in (("exact_match", "exact match"), ("token_accuracy", "token accuracy")):
        for kind, part in strata:
            for _, r in an.band_contrast(part, ["panel", "series"], metric).iterrows():
                band_rows.append(
                    [
                        r["panel"],
                        r["series"],
                        kind,
                        name,
                        *(f"{pct(r[b])} ({r[f'n_{b}']})" for b in ("below", *an.BANDS)),
                        *(fmt_ci(r[f"{b}_minus_medium"], PCT, signed=True) for b in ("below", "short", "long")),
                    ]
                )
            for _, r in an.decile_contrast(part, ["panel", "series"], ["panel"], metric).iterrows():
                decile_rows.append(
                    [
                        r["panel"],
                        r["series"],
                        kind,
                        name,
                        f"< {r['q10']:.3f} / {r['q30']:.3f}–{r['q70']:.3f} / ≥ {r['q90']:.3f}",
                        *(f"{pct(r[b])} ({r[f'n_{b}']})" for b in an.DECILE_PARTS),
                        *(fmt_ci(r[f"{b}_minus_middle"], PCT, signed=True) for b in ("bottom", "top")),
                    ]
                )
    head = ["Panel", "Series", "Targets", "Metric"]
    sec.blocks.append(
        Table(
            CAPTIONS["fig3.2"],
            [*head, "[0, 0.1)", "short", "medium", "long", "[0, 0.1) − medium", "short − medium", "long − medium"],
            band_rows,
        )
    )
    sec.blocks.append(
        Table(
            CAPTIONS["fig3.3"],
            [*head, "Cut points", "bottom 10%", "middle 40%", "top 10%", "bottom − middle", "top − middle"],
            decile_rows,
        )
    )
    clipped = an.clipped_distances(records, ["panel"])
    sec.blocks.append(
        Table(
            CAPTIONS["fig3.4"],
            ["Panel", "Facts", "dist_old > 1", "Trained answers", "dist_new > 1"],
            [
                [
                    r["panel"],
                    str(r["n_old"]),
                    f"{r['clipped_old']} ({r['clipped_old'] / max(r['n_old'], 1):.1%})",
                    str(r["n_new"]),
                    f"{r['clipped_new']} ({r['clipped_new'] / max(r['n_new'], 1):.1%})",
                ]
                for _, r in clipped.iterrows()
            ],
        )
    )
    return sec


def fig4_table1(ctx: Context) -> Section | str:
    records = ctx.data.records
    if records.empty or records[records["k"] == 1].empty:
        return "no single-fact (k = 1) trials with per-fact records"
    records = an.plain(records[records["k"] == 1])
    if records.empty:
        return "no plain (γ = 0, no filter) single-fact trials"
    group = ["model", "method", *an.varying(records, ["dataset"])]
    records = with_labels(records, [], group)
    binned = an.deviation_by_distance(records, ["panel", "series"])
    path = figs.deviation_vs_distance(binned, "series", ctx.fig_dir / "fig4_deviation_vs_distance.png")
    sec = Section("fig4_table1", "Figure 4 and Table 1: moving away from the target (single-fact trials)")
    sec.text(CAPTIONS["fig4_table1.1"])
    sec.blocks.append(ctx.figure("fig4", path, CAPTIONS["fig4_table1.2"]))
    table1 = an.deviation_among_bad(records, group)
    rows = [
        [
            *(an.fmt_value(r[c]) for c in group),
            str(r["n_trials"]),
            str(r["n_bad"]),
            str(r["n_empty_bad"]),
            pct(r["share"]),
            pct(r["deviation_rate"]),
        ]
        for _, r in table1.iterrows()
    ]
    sec.blocks.append(
        Table(
            CAPTIONS["fig4_table1.3"],
            [
                *(c.capitalize() for c in group),
                "Trials",
                "Bad cases",
                "Empty y_new",
                "Deviation among bad cases (%)",
                "Deviation, all facts (%)",
            ],
            rows,
        )
    )
    rd_rows = [
        [
            r["series"],
            bin_label(r),
            str(r["dev_n_facts"]),
            fmt_ci(Estimate(r["dev_estimate"], r["dev_low"], r["dev_high"]), PCT),
            fmt_ci(Estimate(r.get("rd_estimate", np.nan), r.get("rd_low", np.nan), r.get("rd_high", np.nan)), 1.0, 3),
        ]
        for _, r in binned.sort_values(["series", "bin"]).iterrows()
    ]
    sec.blocks.append(
        Table(CAPTIONS["fig4_table1.4"], ["Series", "Distance bin", "Facts", "Deviation (%)", "Mean RD"], rd_rows)
    )
    return sec


def fig6(ctx: Context) -> Section | str:
    trials = an.plain(ctx.data.ok)
    trials = trials[(trials["k"] > 1)]
    if trials.empty or "dist_mean" not in trials or trials["dist_mean"].isna().all():
        return "no plain multi-fact (k > 1) trials with distance statistics"
    group = ["model", "method", *an.varying(trials, ["dataset", "k"])]
    trials = with_labels(trials, [], group)
    path = figs.accuracy_vs_set_statistics(trials, "series", ctx.fig_dir / "fig6_accuracy_vs_mean_variance.png")
    stats = an.set_statistics(trials, ["series"])
    rows = [
        [r["series"], str(r["n_trials"]), pct(r["accuracy"]), fmt_ci(r["r_mean"], 1.0, 3), fmt_ci(r["r_var"], 1.0, 3)]
        for _, r in stats.iterrows()
    ]
    sec = Section("fig6", "Figure 6: accuracy vs mean and variance of the set's distances")
    sec.blocks.append(ctx.figure("fig6", path, CAPTIONS["fig6.1"]))
    sec.blocks.append(
        Table(
            CAPTIONS["fig6.2"],
            ["Series", "Trials", "Accuracy (%)", "r(accuracy, mean)", "r(accuracy, variance)"],
            rows,
        )
    )
    return sec


def table2(ctx: Context) -> Section | str:
    frob = ctx.data.frobenius
    if frob.empty:
        return "no trial logged analysis/frobenius.json"
    frob = frob[frob["run_id"].isin(an.plain(ctx.data.ok)["run_id"])]
    if frob.empty:
        return "no plain (γ = 0, no filter) trial logged analysis/frobenius.json"
    sec = Section("table2", "Table 2: Frobenius-norm analysis of ΔW_q")
    sec.text(CAPTIONS["table2"])
    for key, part in frob.groupby(["model", "method"], dropna=False, sort=True):
        table, edges = an.frobenius_by_third(part, [k for k, _ in FROBENIUS_ROWS])
        if table.empty:
            continue
        first = table.iloc[0]
        heads = [
            f"{band.capitalize()} [{lo:.3f}, {hi:.3f}{']' if band == 'long' else ')'}, n={first[f'n_{band}']}"
            for band, lo, hi in zip(an.BANDS, edges[:-1], edges[1:])
        ]
        names = dict(FROBENIUS_ROWS)
        rows = [[names[r["quantity"]], *(fmt_ci(r[b], 1.0, 4) for b in an.BANDS)] for _, r in table.iterrows()]
        layers = ", ".join(map(an.fmt_value, sorted(part["layer"].dropna().unique()))) if "layer" in part else "—"
        ranks = ", ".join(map(an.fmt_value, sorted(part["rank"].dropna().unique()))) if "rank" in part else "—"
        sec.blocks.append(
            Table(
                f"Table 2 ({an.fmt_value(key[0])} / {an.fmt_value(key[1])}, layer {layers}, rank r = {ranks}): "
                "Frobenius norms by mean target distance [95% bootstrap CI over trials].",
                ["Norm", *heads],
                rows,
            )
        )
    return sec


def fig5(ctx: Context) -> Section | str:
    features = ctx.data.features
    if not features:
        return "no trial logged analysis/features.npz"
    plain = an.plain(ctx.data.ok)
    model_of = {
        r: f"{an.fmt_value(m)} / {an.fmt_value(t)}" for r, m, t in zip(plain["run_id"], plain["model"], plain["method"])
    }
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
    sec.text(
        "Last-layer hidden state of the final prompt token of each test fact, pooled over the plain trials "
        f"(γ = 0, no filter) of a model and method (at most {FEATURE_TRIALS_PER_MODEL} per model) and projected on its first 15 principal "
        "components. Spread = total variance of a band's points in that space; norm = mean distance from "
        "the centre; both per trial, then averaged over trials."
    )
    sec.blocks.append(ctx.figure("fig5", path, CAPTIONS["fig5"]))
    for model, (pts, _) in sorted(points.items()):
        spread = an.pca_spread(pts)
        rows = [
            [r["band"], str(r["n_points"]), str(r["n_trials"]), fmt_ci(r["spread"], 1.0, 3), fmt_ci(r["norm"], 1.0, 3)]
            for _, r in spread.iterrows()
        ]
        sec.blocks.append(
            Table(
                f"Figure 5 data ({model}): feature spread per distance band [95% bootstrap CI over trials].",
                ["Band", "Facts", "Trials", "Spread", "Mean norm"],
                rows,
            )
        )
    return sec


def fig8(ctx: Context) -> Section | str:
    records = ctx.data.records
    if records.empty:
        return "no per-fact records"
    records = an.plain(records)
    if records["k"].nunique() < 2:
        return "needs plain trials with at least two fact quantities k"
    panel = ["model", "method", *an.varying(records, ["dataset"])]
    records = with_labels(records, panel, ["k"])
    binned = an.accuracy_by_distance(records, ["panel", "series"])
    path = figs.accuracy_vs_distance(
        binned,
        "facts per trial",
        ctx.fig_dir / "fig8_accuracy_by_quantity.png",
        "Figure 8: accuracy vs target semantic distance per number of facts k",
    )
    sec = Section("fig8", "Figure 8: learning different quantities of knowledge")
    sec.blocks.append(ctx.figure("fig8", path, CAPTIONS["fig8"]))
    sec.blocks.append(binned_table(binned, "Figure 8 data: accuracy per distance bin and k (%)."))
    return sec


def table5(ctx: Context) -> Section | str:
    records = ctx.data.records
    if records.empty:
        return "no per-fact records"
    examples = an.example_responses(records)
    if examples.empty:
        return "no fact falls in the short / medium / long bands"
    rows = [
        [
            r["band"],
            an.fmt_value(r["model"]),
            f"{r['dist_old']:.3f}",
            r["prompt"],
            r["target"],
            r["y_old"],
            r["y_new"],
            "yes" if r["exact_match"] >= 1 else "no",
        ]
        for _, r in examples.iterrows()
    ]
    sec = Section("table5", "Table 5: example responses per distance band")
    sec.blocks.append(
        Table(
            CAPTIONS["table5"],
            ["Band", "Model", "dist(y_old, y_t)", "Prompt", "Target", "y_old", "y_new", "Correct"],
            rows,
        )
    )
    return sec
