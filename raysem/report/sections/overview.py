"""The report's first section (what the experiment holds, the headline per configuration) and a comparison with another."""

from __future__ import annotations

from typing import Any

import pandas as pd

from raysem.report import analysis as an
from raysem.report.captions import CAPTIONS
from raysem.report.data import KIND_TAG, StudyData
from raysem.report.format import PCT, SCALED_METRICS, pct
from raysem.report.render import Section, Table, fmt_ci
from raysem.report.sections.context import Context


def overview(ctx: Context, columns: list[str]) -> tuple[Section, dict[str, dict[str, Any]]]:
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
        sec.text(
            f"{len(data.missing_records)} finished trial(s) have no readable records/facts.parquet; "
            "they count in trial-level numbers but not in per-fact figures."
        )
    head = an.headline(ok, columns)
    metrics = [m for m in an.HEADLINE_METRICS if any(m in e for e in head.values())]
    rows = [[name, str(e["n_trials"]), *(pct(e[m]) if m in e else "—" for m in metrics)] for name, e in head.items()]
    sec.blocks.append(
        Table(
            CAPTIONS["overview"],
            ["Configuration", "Trials", *(f"{SCALED_METRICS[m]} (%)" for m in metrics)],
            rows,
        )
    )
    return sec, head


def compare(ctx: Context, other: StudyData) -> Section:
    a, b = ctx.data.ok, other.ok
    columns = an.varying(pd.concat([a, b], ignore_index=True), an.CONFIG_COLUMNS)
    metrics = [m for m in ("accuracy", "generality", "locality") if m in a and m in b]
    table = an.compare_configs(a, b, columns, metrics)
    sec = Section("compare", f"Comparison with {other.experiment}")
    sec.text(
        f"A = {ctx.data.experiment} ({len(a)} trials), B = {other.experiment} ({len(b)} trials). "
        "Δ = B − A in percentage points; paired over (sampling, seed) where the two studies share them, "
        "otherwise an unpaired bootstrap of the difference of means."
    )
    if table.empty:
        sec.text(CAPTIONS["compare"])
        return sec
    rows = [
        [
            r["config"],
            SCALED_METRICS[r["metric"]],
            f"{pct(r['a'])} (n={r['n_a']})",
            f"{pct(r['b'])} (n={r['n_b']})",
            fmt_ci(r["delta"], PCT, signed=True),
            r["how"],
        ]
        for _, r in table.iterrows()
    ]
    sec.blocks.append(
        Table(
            f"Headline metrics of {ctx.data.experiment} (A) and {other.experiment} (B) [95% bootstrap CI].",
            ["Configuration", "Metric", "A (%)", "B (%)", "Δ B − A (pp)", "Difference"],
            rows,
        )
    )
    return sec
