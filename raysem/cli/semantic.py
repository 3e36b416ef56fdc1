"""``raysem distances`` and ``raysem filter``: target-distance tables and the data filter (Eq. 4)."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from raysem.cli import options

SUMMARY_KEYS = ("count", "mean", "std", "min", "max", "empty", "preface", "train_tokens")
semantic_app = typer.Typer(help="Target semantic distances and the distance-based data filter.", no_args_is_help=True)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _json_number(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


@semantic_app.command()
def distances(
    dataset: str = typer.Argument(..., help="zsre, counterfact, knowedit, worldfacts, worldfacts-cf, or a file path."),
    model: str = typer.Option(
        "smollm2-135m-instruct", "--model", "-m", help="Embedded model name, local folder or hub id."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N facts."),
    out: Path | None = typer.Option(None, "--out", help="Also write the table here (.parquet or .csv)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Facts per decoding batch."),
    refresh: bool = typer.Option(False, "--refresh", help="Recompute even when the table is cached."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object: count, mean, std, min, max, empty, path."
    ),
    prompt_style: str = options.PROMPT_STYLE,
    answer_budget: str = options.ANSWER_BUDGET,
    free_tokens: int = options.FREE_TOKENS,
) -> None:
    """Compute (or read from the cache) the base model's answers and target distances for a dataset."""
    from raysem.data.facts import DatasetError
    from raysem.models.catalog import ModelError
    from raysem.semantics.tables import distance_table, summary

    if out is not None and out.suffix not in (".parquet", ".csv"):
        _fail(f"--out must end in .parquet or .csv, got {out}")
    start = time.perf_counter()
    try:
        prompting = options.prompting(prompt_style, answer_budget, free_tokens)
        frame, path = distance_table(
            model,
            dataset,
            limit=limit,
            batch_size=batch_size,
            refresh=refresh,
            progress=not as_json,
            prompting=prompting,
        )
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.suffix == ".parquet":
                shutil.copyfile(path, out)
            else:
                frame.assign(locality_base=[json.dumps(x) for x in frame["locality_base"]]).to_csv(out, index=False)
    except (DatasetError, ModelError, ValueError, OSError) as exc:
        _fail(str(exc))
    stats = summary(frame)
    shown = out if out is not None else path
    if as_json:
        payload: dict[str, Any] = {key: _json_number(value) for key, value in stats.items()}
        payload.update(
            path=str(shown),
            cache=str(path),
            model=model,
            **prompting.key(),
            seconds=round(time.perf_counter() - start, 3),
        )
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    table = Table(title=f"target distances: {dataset} under {model}")
    for key in SUMMARY_KEYS:
        table.add_column(key, justify="right")
    table.add_row(*(f"{stats[k]:.4f}" if isinstance(stats[k], float) else str(stats[k]) for k in SUMMARY_KEYS))
    console = Console()
    console.print(table)
    console.print(f"table: {shown}")


@semantic_app.command("filter")
def filter_command(
    table: Path = typer.Option(..., "--table", help="A distance table (.parquet) from `raysem distances`."),
    size: int = typer.Option(..., "--size", min=1, help="|K|: facts drawn (with --seed) as the training set."),
    replace: float = typer.Option(..., "--replace", help="ρ: share of K to replace, in [0, 1]."),
    lam: float = typer.Option(0.0, "--lambda", help="λ ≥ 0: weight of the variance in μ - λ·σ²."),
    sigma: str = typer.Option("variance", "--sigma", help="Eq. 4's σ: variance (μ - λ·σ², default) or std (μ - λ·σ)."),
    mean_min: float | None = typer.Option(None, "--mean-min", help="Mean_min: the filtered set's mean must exceed it."),
    mean_max: float | None = typer.Option(
        None, "--mean-max", help="Mean_max: the filtered set's mean must stay below it."
    ),
    random_baseline: bool = typer.Option(
        False, "--random", help="Replace random members by random pool facts instead."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the draw of K (and of the random baseline)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Draw K from a distance table, filter it against the rest of the table (the pool), print the result."""
    from raysem.data.sampling import sample_facts
    from raysem.semantics.filter import greedy_filter, random_filter
    from raysem.semantics.tables import load_distance_table

    if random_baseline and (mean_min is not None or mean_max is not None):
        _fail("--mean-min/--mean-max apply to the greedy filter, not to --random")
    try:
        frame = load_distance_table(table)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    defined = frame[frame["dist_old"].notna()]
    if size > len(defined):
        _fail(f"--size {size} is larger than the {len(defined)} facts with a target distance in {table}")
    dist = dict(zip(frame["fact_id"], frame["dist_old"]))
    train_ids = [str(i) for i in sample_facts(list(defined["fact_id"]), size, seed)]
    chosen = set(train_ids)
    pool_ids = [str(i) for i in frame["fact_id"] if i not in chosen]
    args = (train_ids, [dist[i] for i in train_ids], pool_ids, [dist[i] for i in pool_ids])
    try:
        if random_baseline:
            result = random_filter(*args, replace=replace, seed=seed, lam=lam, sigma=sigma)  # type: ignore[arg-type]
        else:
            result = greedy_filter(
                *args,
                replace=replace,
                lam=lam,
                mean_min=mean_min,
                mean_max=mean_max,
                sigma=sigma,  # type: ignore[arg-type]
            )
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        payload: dict[str, Any] = {
            "table": str(table),
            "size": size,
            "replace": replace,
            "lambda": lam,
            "sigma": sigma,
            "mean_min": mean_min,
            "mean_max": mean_max,
            "seed": seed,
            "test_ids": train_ids,
            **result.to_dict(),
        }
        sys.stdout.write(json.dumps(payload) + "\n")
        return
    console = Console()
    console.print(f"{result.method} filter: |K|={size}, ρ={replace}, λ={lam}, {len(result.trace)} swaps")
    summary = Table()
    for column in ("", "μ", "σ²", "μ - λ·σ²"):
        summary.add_column(column, justify="right")
    for name, stats in (("before", result.before), ("after", result.after)):
        summary.add_row(name, f"{stats['mean']:.4f}", f"{stats['var']:.4f}", f"{stats['objective']:.4f}")
    console.print(summary)
    if result.excluded_pool:
        console.print(f"{len(result.excluded_pool)} pool facts left out: no target distance (empty answer)")
    console.print(f"removed: {' '.join(result.removed) or '-'}")
    console.print(f"added: {' '.join(result.added) or '-'}")
    console.print(f"training set: {' '.join(result.train_ids)}")
