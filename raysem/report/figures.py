"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from raysem.report.analysis import BANDS, BIN_EDGES

BAND_COLOURS = {"short": "#1b9e77", "medium": "#d95f02", "long": "#7570b3", "none": "#bbbbbb"}
BIN_CENTRES = (BIN_EDGES[:-1] + BIN_EDGES[1:]) / 2
DPI = 110


def _figure(ncols: int, nrows: int = 1, width: float = 5.2, height: float = 3.8, **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(width * ncols, 8.0), height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _distance_axis(ax: Axes) -> None:
    ax.set_xlim(0, 1)
    ax.set_xticks(BIN_EDGES)
    ax.set_xlabel("target semantic distance dist(y_old, y_t)")
    ax.grid(alpha=0.3)


def _ci_line(ax: Axes, x, est, low, high, label: str, colour=None, marker: str = "o") -> None:
    (line,) = ax.plot(x, est, marker=marker, label=label, color=colour)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, linewidth=0)


def _binned_lines(ax: Axes, frame: pd.DataFrame, series: str, prefix: str = "") -> None:
    """One line per series over the bin centres; bins without facts are gaps, not interpolated."""
    for name, part in frame.groupby(series, sort=True):
        full = part.set_index("bin").reindex(range(len(BIN_CENTRES)))
        _ci_line(ax, BIN_CENTRES, full[f"{prefix}estimate"], full[f"{prefix}low"], full[f"{prefix}high"], str(name))


def accuracy_vs_distance(frame: pd.DataFrame, series_title: str, path: Path, title: str) -> Path:
    """Figure 3 / 8: accuracy per distance bin (top) and facts per bin (bottom), one column per ``panel``."""
    panels = sorted(frame["panel"].unique())
    fig, axes = _figure(len(panels), 2, height=2.7, gridspec_kw={"height_ratios": [2.2, 1]}, sharex=True)
    for j, name in enumerate(panels):
        part = frame[frame["panel"] == name]
        top, bottom = axes[0, j], axes[1, j]
        _binned_lines(top, part, "series")
        top.set_title(str(name))
        top.set_ylabel("accuracy (exact match)")
        top.set_ylim(-0.02, 1.02)
        top.grid(alpha=0.3)
        top.legend(fontsize="small", title=series_title, title_fontsize="small")
        names = sorted(part["series"].unique())
        width = 0.08 / len(names)
        for i, s in enumerate(names):
            rows = part[part["series"] == s]
            x = BIN_CENTRES[rows["bin"].to_numpy()] - 0.04 + width * (i + 0.5)
            bottom.bar(x, rows["n_facts"], width=width, color=f"C{i}", label=str(s))
        bottom.set_ylabel("facts per bin")
        _distance_axis(bottom)
    fig.suptitle(title)
    return _save(fig, path)


def deviation_vs_distance(frame: pd.DataFrame, series: str, path: Path) -> Path:
    """Figure 4: share of facts that moved away from the target, and mean RD, per distance bin."""
    fig, axes = _figure(2)
    share, rd = axes[0]
    _binned_lines(share, frame, series, "dev_")
    share.set_ylabel("deviation share (dist_new > dist_old)")
    share.set_ylim(-0.02, 1.02)
    share.set_title("(a) how often single-fact training moves away")
    if "rd_estimate" in frame:
        _binned_lines(rd, frame.dropna(subset=["rd_estimate"]), series, "rd_")
    rd.axhline(0, color="k", lw=0.8)
    rd.set_ylabel("mean relative deviation RD")
    rd.set_title("(b) how far (RD = Δdist / dist_old)")
    for ax in (share, rd):
        _distance_axis(ax)
        ax.legend(fontsize="small")
    fig.suptitle("Figure 4: deviation from the target vs target semantic distance (k = 1 trials)")
    return _save(fig, path)


def _trend(ax: Axes, x: np.ndarray, y: np.ndarray, colour) -> None:
    ok = ~(np.isnan(x) | np.isnan(y))
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        slope, icept = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 20)
        ax.plot(xs, icept + slope * xs, color=colour, lw=1.2, ls="--")


def accuracy_vs_set_statistics(trials: pd.DataFrame, series: str, path: Path) -> Path:
    """Figure 6: trial accuracy against the mean and the variance of its facts' target distances."""
    fig, axes = _figure(2)
    for ax, column, xlabel in zip(axes[0], ("dist_mean", "dist_var"), ("mean", "variance")):
        for i, (name, part) in enumerate(trials.groupby(series, sort=True)):
            colour = f"C{i}"
            x, y = part[column].to_numpy(float), part["accuracy"].to_numpy(float)
            ax.scatter(x, y, s=18, alpha=0.7, color=colour, label=str(name))
            _trend(ax, x, y, colour)
        ax.set_xlabel(f"{xlabel} of the set's target semantic distances")
        ax.set_ylabel("trial accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0, 0].set_title("(a) accuracy vs mean distance")
    axes[0, 1].set_title("(b) accuracy vs variance of distance")
    fig.suptitle("Figure 6: multi-fact trials (k > 1); dashed: least-squares trend")
    return _save(fig, path)


def feature_pca(points_by_model: dict[str, tuple[pd.DataFrame, np.ndarray]], path: Path) -> Path:
    """Figure 5: features on the first two PCs by distance band, and each band's variance per PC.

    ``points_by_model`` maps a model to its PCA points and each component's share of the variance.
    """
    fig, axes = _figure(2, len(points_by_model))
    for row, (model, (points, explained)) in enumerate(sorted(points_by_model.items())):
        scatter, spread = axes[row]
        pcs = [c for c in points if c.startswith("pc")]
        for band in ("none", *BANDS):
            part = points[points["band"] == band]
            if part.empty:
                continue
            name = "outside bands" if band == "none" else band
            y = part["pc2"] if "pc2" in part else np.zeros(len(part))
            scatter.scatter(part["pc1"], y, s=10, alpha=0.6, color=BAND_COLOURS[band], label=f"{name} ({len(part)})")
            if band != "none" and len(part) > 1:
                spread.plot(
                    range(1, len(pcs) + 1),
                    part[pcs].var(axis=0, ddof=1),
                    marker="o",
                    ms=3,
                    color=BAND_COLOURS[band],
                    label=band,
                )
        scatter.set_xlabel(f"PC1 ({explained[0]:.0%} of the variance)")
        scatter.set_ylabel(f"PC2 ({explained[1]:.0%})" if len(explained) > 1 else "PC2")
        scatter.set_title(f"{model}: features by distance band")
        scatter.legend(fontsize="small", title="band (facts)", title_fontsize="small")
        spread.set_xlabel("principal component")
        spread.set_ylabel("variance of projections")
        spread.set_title(f"{model}: feature spread per component")
        spread.set_xticks(range(1, len(pcs) + 1))
        spread.legend(fontsize="small")
        for ax in (scatter, spread):
            ax.grid(alpha=0.3)
    fig.suptitle(
        "Figure 5: PCA of last-layer features of the test prompts (short 0.1–0.3, medium 0.3–0.6, long 0.6–1.0)"
    )
    return _save(fig, path)


def filter_vs_random(frame: pd.DataFrame, baselines: dict[tuple[str, str], float], path: Path) -> Path:
    """Figure 7: accuracy against the replaced share ρ for semantic filtering and random replacement.

    ``frame`` has one row per (panel, series, replace) with ``filter`` / ``random`` estimates;
    ``baselines`` maps (panel, series) to the accuracy without replacement (dashed line).
    """
    panels = sorted(frame["panel"].unique())
    fig, axes = _figure(len(panels))
    for ax, name in zip(axes[0], panels):
        part = frame[frame["panel"] == name]
        for i, (s, rows) in enumerate(part.groupby("series", sort=True)):
            rows = rows.sort_values("replace")
            prefix = "" if s == "all trials" else f"{s} · "
            for mode, marker, ls, shift in (("filter", "o", "-", -0.004), ("random", "s", ":", 0.004)):
                est = rows[mode].map(lambda e: e.estimate).to_numpy(float)
                if np.isnan(est).all():
                    continue
                low = rows[mode].map(lambda e: e.low).to_numpy(float)
                high = rows[mode].map(lambda e: e.high).to_numpy(float)
                yerr = np.nan_to_num(np.vstack([est - low, high - est]))
                ax.errorbar(
                    rows["replace"] + shift,
                    est,
                    yerr=yerr,
                    marker=marker,
                    ls=ls,
                    color=f"C{i}",
                    capsize=3,
                    label=f"{prefix}{'semantic filter' if mode == 'filter' else 'random replacement'}",
                )
            if (name, s) in baselines:
                ax.axhline(baselines[(name, s)], color=f"C{i}", lw=0.9, ls="--", label=f"{prefix}no replacement")
        ax.set_title(str(name))
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("replaced share of the training set ρ")
        ax.set_ylabel("accuracy on the original facts")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Figure 7: semantic data filtering vs random replacement (bars: 95% CI over trials)")
    return _save(fig, path)


def sweep_progress(trials: pd.DataFrame, objective: str, swept: list[str], path: Path) -> Path:
    """The search: its objective per trial in search order with the running best (a), and the objective
    over the first two swept parameters (b; over the one parameter when only one was swept)."""
    fig, axes = _figure(2)
    axes = axes[0]
    values = trials[objective].to_numpy(dtype=float)
    order = np.arange(1, len(values) + 1)
    axes[0].plot(order, values, "o", color="#888888", label="trial")
    axes[0].plot(
        order, np.fmax.accumulate(np.nan_to_num(values, nan=-np.inf)), "-", color="#1f77b4", label="running best"
    )
    axes[0].set_xlabel("trial (search order)")
    axes[0].set_ylabel(objective)
    axes[0].legend(fontsize=8)
    x = trials[swept[0]].to_numpy(dtype=float)
    if len(swept) > 1:
        points = axes[1].scatter(x, trials[swept[1]].to_numpy(dtype=float), c=values, cmap="viridis")
        fig.colorbar(points, ax=axes[1], label=objective)
        axes[1].set_ylabel(swept[1])
    else:
        axes[1].plot(x, values, "o")
        axes[1].set_ylabel(objective)
    axes[1].set_xlabel(swept[0])
    return _save(fig, path)
