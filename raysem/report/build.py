"""``build_report``: turn a study's MLflow experiment into the paper's figures and tables.

Writes ``report.md`` (figures linked from ``figures/``), a self-contained ``report.html``,
the PNG figures and ``trials.csv`` into one folder, and logs that folder under ``report/``
to the study's parent run. Every headline number is a mean over trials with a 95% BCa
bootstrap interval over trials; γ and filter effects are paired over trials that share the
sampling and the seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from raysem.report import analysis as an
from raysem.report.data import ReportError, load_study, open_client
from raysem.report.format import ci_text
from raysem.report.render import Section, render_html, render_markdown
from raysem.report.sections import SECTIONS, Context
from raysem.report.sections.context import logged_spec
from raysem.report.sections.overview import compare as compare_section
from raysem.report.sections.overview import overview
from raysem.report.stats import Estimate

__all__ = ["ReportError", "ReportSummary", "build_report"]


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
            + ", ".join(f"{m} {ci_text(e, row['n_trials'])}" for m, e in row.items() if m != "n_trials")
            for label, row in self.headline.items()
        ]
        lines.append(f"sections: {', '.join(self.sections)}")
        lines += [f"skipped {key}: {reason}" for key, reason in self.skipped.items()]
        lines += [f"note: {note}" for note in self.notes]
        if self.logged_run_id:
            lines.append(f"logged to run {self.logged_run_id} under report/")
        return "\n".join([*lines, str(self.markdown), str(self.html)])


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def headline_metrics(head: dict[str, dict[str, Any]]) -> list:
    """The headline as MLflow metrics of the parent run, comparable across studies in the MLflow UI:
    ``<metric>.<configuration>`` (mean) with ``.ci_low`` / ``.ci_high``, and ``n_trials.<configuration>``."""
    from mlflow.entities import Metric

    now, out = int(datetime.now(timezone.utc).timestamp() * 1000), []
    for label, entry in head.items():
        config = (
            " ".join(re.sub(r"[^\w.\-]+", "", part.replace("=", "_")) for part in label.split(" · ")).strip() or "all"
        )
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
    ctx = Context(data, fig_dir, spec=logged_spec(data))

    columns = an.varying(data.ok, an.CONFIG_COLUMNS)
    first, head = overview(ctx, columns)
    sections, skipped = [first], {}
    for key, make in SECTIONS:
        result = make(ctx) if not data.ok.empty else "no finished trial"
        if result is None:
            continue
        if isinstance(result, str):
            skipped[key] = result
        else:
            sections.append(result)
    if other is not None:
        sections.append(compare_section(ctx, other))
    if skipped:
        sections.append(
            Section("skipped", "Not produced").text(
                "; ".join(f"{key}: {reason}" for key, reason in skipped.items()) + "."
            )
        )

    title = f"raysem report: {experiment}"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    preamble = [
        *(f"Note: {note}." for note in ctx.notes),
        f"Experiment {experiment} at {client.tracking_uri}; generated {stamp}. "
        "Numbers are means over trials with 95% bootstrap intervals over trials in brackets: BCa "
        "(bias-corrected and accelerated, scipy.stats.bootstrap, 2,000 resamples), or percentile where BCa is "
        "undefined; paired deltas carry a two-sided sign-flip permutation test (p).",
    ]
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(title, preamble, sections, out), encoding="utf-8")
    html_path.write_text(render_html(title, preamble, sections), encoding="utf-8")
    data.trials.to_csv(out / "trials.csv", index=False)

    summary = ReportSummary(
        experiment=experiment,
        out_dir=out,
        markdown=md_path,
        html=html_path,
        sections=[s.key for s in sections if s.key != "skipped"],
        skipped=skipped,
        figures=dict(ctx.figures),
        headline=head,
        n_trials=len(data.trials),
        n_failed=int(data.trials["failed"].sum()),
        n_duplicates=data.duplicates,
        parent_run_ids=[p.info.run_id for p in data.parents],
        compare=compare,
        notes=list(ctx.notes),
    )
    if log_to_mlflow:
        if data.parents:
            summary.logged_run_id = data.parents[-1].info.run_id
            client.log_artifacts(summary.logged_run_id, str(out), artifact_path="report")
            client.log_batch(summary.logged_run_id, metrics=headline_metrics(head))
        else:
            summary.notes.append("no parent study run in the experiment; the report was not logged to MLflow")
    return summary
