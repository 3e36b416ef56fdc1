"""``raysem bench``: single-fact LoRA trials per hour — a process per trial, a resident model, packed trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from raysem.models.catalog import DEFAULT_MODEL

bench_app = typer.Typer(
    help="Measure throughput: `raysem bench` trials per hour, `raysem bench tracking` MLflow runs per second."
)


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


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="Fewer trials and steps; K in {8, 16}."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Embedded model name, local folder or Hugging Face id."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cpu); CUDA runs in bf16."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads for every variant (default: torch's)."
    ),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps per trial."),
    naive_trials: int | None = typer.Option(None, "--naive-trials", min=1, help="Trials run one process each."),
    resident_trials: int | None = typer.Option(
        None, "--resident-trials", min=1, help="Unpacked trials on the resident model."
    ),
    pack_sizes: str | None = typer.Option(
        None, "--pack-sizes", help="Comma-separated K values (default 8,16,32,64; quick: 8,16)."
    ),
) -> None:
    """Single-fact LoRA trials per hour for each variant, and the share of the matmul peak each reaches."""
    if ctx.invoked_subcommand:
        return
    from raysem.bench.training import BenchSettings, run_bench

    overrides: dict[str, Any] = dict(
        model=model,
        device=device,
        threads=threads,
        steps=steps,
        naive_trials=naive_trials,
        resident_trials=resident_trials,
        pack_sizes=_pack_sizes(pack_sizes),
    )
    settings = (
        BenchSettings.quick(**overrides)
        if quick
        else BenchSettings(**{k: v for k, v in overrides.items() if v is not None})
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
    best = str(summary["best_pack_size"])
    typer.echo(
        f"packed K={best}: training is {100 * summary['packed_train_flop_share'][best]:.0f}% of the useful FLOPs "
        f"and runs at {100 * summary['packed_train_matmul_share'][best]:.1f}% of the matmul peak"
    )


@bench_app.command("tracking")
def tracking_bench(
    trials: int = typer.Option(1000, "--trials", min=1, help="Trials logged by each batched variant."),
    batch: int = typer.Option(100, "--batch", min=1, help="Trials per logging call (a packed unit's trials)."),
    per_trial: int = typer.Option(200, "--per-trial-trials", min=1, help="Trials logged one per call (the slow path)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """MLflow trial runs per second into a SQLite URI and a real `mlflow server`: one run per call
    against batches, side by side; every run is read back."""
    from raysem.bench.tracking import run_tracking_bench

    err = Console(stderr=True)
    summary = run_tracking_bench(
        trials, batch, per_trial, progress=None if as_json else lambda message: err.print(f"[dim]{message}[/dim]")
    )
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"MLflow trial runs per second ({trials} batched in {batch}s, {per_trial} one per call)")
    for column in ("target", "one per call", "batched", "× one per call"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for name in ("sqlite", "server", "server_store"):
        row = summary[name]
        slow = row.get("per_trial_runs_per_s")
        table.add_row(
            name,
            "—" if slow is None else f"{slow:.1f}",
            f"{row['runs_per_s']:.1f}",
            "—" if slow is None else f"{row['speedup']:.1f}",
        )
    Console().print(table)
    ceiling = summary["server_ceiling"]
    typer.echo(
        f"server ceiling: {ceiling['write_requests_per_s']:.0f} write requests/s (set_tag), so at most "
        f"{ceiling['runs_per_s_bound']:.0f} runs/s over REST (three writes a run)"
    )


@bench_app.command("chaos")
def chaos_bench(
    trials: int = typer.Option(10_000, "--trials", min=4, help="Trials in the study (even)."),
    kill_every: float = typer.Option(20.0, "--kill-every", min=1.0, help="Seconds between SIGKILLs of a Tune worker."),
    folder: Path | None = typer.Option(
        None, "--folder", help="Where the study, its store and logs go (default: a temp folder)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of lines."),
) -> None:
    """A study under faults (Tune workers killed, the mlflow server restarted, the driver killed and
    resumed), then its MLflow runs counted: each trial exactly once, none left RUNNING."""
    from raysem.bench.chaos import run_chaos

    err = Console(stderr=True)
    summary = run_chaos(trials, kill_every, folder, progress=lambda message: err.print(f"[dim]{message}[/dim]"))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"{summary['trials']} trials in {summary['wall_s']:.0f} s under {summary['worker_kills']} worker kills, "
            f"{summary['server_restarts']} server restart, {summary['driver_kills']} driver kill: "
            f"{summary['finished_distinct']} distinct finished, {summary['duplicates']} duplicates, {summary['lost']} lost, "
            f"{summary['running']} left RUNNING; runs by status {summary['runs_by_status']}"
        )
    if not summary["ok"]:
        raise typer.Exit(1)


@bench_app.command("plan")
def plan_bench(
    spec: Path = typer.Argument(Path("jobs/quick_study.yaml"), help="study spec whose largest unit is measured"),
    models: list[str] = typer.Option(
        ["smollm2-135m-instruct", "tiny"], "--model", help="embedded model name, folder, or 'tiny' (a random Llama)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """``raysem study plan``'s memory and time of one unit against a real unit run here on the CPU."""
    import tempfile

    from transformers import AutoTokenizer

    from raysem.bench.plan_check import run_plan_check
    from raysem.models.loader import pull_model
    from raysem.models.tiny import tiny_llama

    folder = Path(tempfile.mkdtemp(prefix="raysem-plan-"))
    named = [str(tiny_llama(folder, AutoTokenizer.from_pretrained(pull_model()))) if m == "tiny" else m for m in models]
    rows = run_plan_check(spec, named, {})
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title=f"one unit of {spec}: plan against measurement (CPU, float32, one thread)")
    for column in ("model", "unit", "planned GiB", "measured GiB", "ratio", "s", "planned s at matmul peak", "MFU"):
        table.add_column(column, justify="left" if column in ("model", "unit") else "right")
    for row, name in zip(rows, models):
        table.add_row(
            name,
            row["unit"],
            f"{row['planned_gib']:.3f}",
            f"{row['measured_gib']:.3f}",
            f"{row['measured_gib'] / row['planned_gib']:.2f}",
            f"{row['seconds']:.1f}",
            f"{row['planned_s_at_matmul_peak']:.1f}",
            f"{row['planned_s_at_matmul_peak'] / row['seconds']:.3f}",
        )
    Console().print(table)


def render_table(summary: dict[str, Any]) -> Table:
    """The benchmark summary as a table: trials/hour, ratio to the naive run, share of the matmul peak
    by wall time and by CPU time (the latter is blind to time lost to other processes), and a packed run's
    seconds in base answers, training and evaluation."""
    from raysem.bench.training import variant_label

    title = f"single-fact LoRA trials, {summary['model']} on {summary['device']}, {summary['steps']} steps"
    table = Table(title=title)
    columns = (
        "variant",
        "trials",
        "wall s",
        "CPU s",
        "trials/hour",
        "× naive",
        "% matmul peak",
        "% peak per CPU s",
        "base · train · eval s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    naive = summary["naive_trials_per_hour"]
    rows = [
        ("naive", summary["naive_trials_per_hour"], summary["naive_matmul_share"], {}),
        ("resident", summary["resident_trials_per_hour"], summary["resident_matmul_share"], {}),
        *(
            (f"packed:{k}", rate, summary["packed_matmul_share"][k], summary["packed_parts_s"][k])
            for k, rate in summary["packed"].items()
        ),
    ]
    for name, rate, share, parts in rows:
        cpu_share = summary["cpu_matmul_share"][name]
        table.add_row(
            variant_label(name),
            str(summary["trials"][name]),
            f"{summary['wall_s'][name]:.1f}",
            f"{summary['cpu_s'][name]:.1f}",
            f"{rate:,.0f}",
            f"{rate / naive:.2f}",
            f"{100 * share:.1f}",
            "—" if cpu_share is None else f"{100 * cpu_share:.1f}",
            " · ".join(f"{parts[p]:.1f}" for p in ("base", "train", "evaluate")) if parts else "—",
        )
    return table
