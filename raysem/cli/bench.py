"""``raysem bench``: single-fact LoRA trials per hour — a process per trial, a resident model, packed trials."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from raysem.models.loader import DEFAULT_MODEL
from raysem.training.bench import PACK_SIZES, BenchSettings, run_bench

bench_app = typer.Typer(help="Measure trial throughput.")


def _pack_sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"pack sizes must be positive integers, got {text!r}")
    return sizes


@bench_app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Fewer trials and steps; K in {8, 16}."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Embedded model name, local folder or Hugging Face id."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cpu); CUDA runs in bf16."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for every variant (default: torch's)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps per trial."),
    naive_trials: int | None = typer.Option(None, "--naive-trials", min=1, help="Trials run one process each."),
    resident_trials: int | None = typer.Option(None, "--resident-trials", min=1, help="Unpacked trials on the resident model."),
    pack_sizes: str | None = typer.Option(None, "--pack-sizes", help=f"Comma-separated K values (default {','.join(map(str, PACK_SIZES))})."),
) -> None:
    """Single-fact LoRA trials per hour for each variant, and the share of the matmul peak each reaches."""
    overrides = dict(
        model=model, device=device, threads=threads, steps=steps, naive_trials=naive_trials,
        resident_trials=resident_trials, pack_sizes=_pack_sizes(pack_sizes),
    )  # fmt: skip
    settings = (
        BenchSettings.quick(**overrides) if quick else BenchSettings(**{k: v for k, v in overrides.items() if v is not None})
    )
    err = Console(stderr=True)
    summary = run_bench(settings, progress=None if as_json else lambda message: err.print(f"[dim]{message}[/dim]"))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    Console().print(render_table(summary))
    typer.echo(
        f"matmul peak {summary['matmul_gflops']:.0f} GFLOP/s; best K={summary['best_pack_size']}: "
        f"{summary['best_speedup']:.2f}× naive, {summary['best_speedup_vs_resident']:.2f}× resident; "
        f"default pack size {summary['default_pack_size']}; {summary['threads']} threads"
    )


def render_table(summary: dict[str, Any]) -> Table:
    """The benchmark summary as a table: trials/hour, ratio to the naive run, share of the matmul peak
    by wall time and by CPU time (the latter is blind to time lost to other processes)."""
    title = f"single-fact LoRA trials, {summary['model']} on {summary['device']}, {summary['steps']} steps"
    table = Table(title=title)
    columns = ("variant", "trials", "wall s", "CPU s", "trials/hour", "× naive", "% matmul peak", "% peak per CPU s")
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    naive = summary["naive_trials_per_hour"]
    rows = [
        ("naive (process per trial)", summary["naive_trials_per_hour"], summary["naive_matmul_share"]),
        ("resident, unpacked", summary["resident_trials_per_hour"], summary["resident_matmul_share"]),
        *((f"packed K={k}", rate, summary["packed_matmul_share"][k]) for k, rate in summary["packed"].items()),
    ]
    for name, rate, share in rows:
        cpu_share = summary["cpu_matmul_share"][name]
        table.add_row(
            name, str(summary["trials"][name]), f"{summary['wall_s'][name]:.1f}", f"{summary['cpu_s'][name]:.1f}",
            f"{rate:,.0f}", f"{rate / naive:.2f}", f"{100 * share:.1f}", "—" if cpu_share is None else f"{100 * cpu_share:.1f}",
        )  # fmt: skip
    return table
