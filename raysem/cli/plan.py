"""``raysem study plan``: a study's memory, FLOPs, GPU-hours and wall time before it launches."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def plan(
    spec: Path = typer.Argument(..., help="study spec YAML"),
    quick: bool = typer.Option(False, help="apply the spec's quick overrides"),
    sets: list[str] = typer.Option(
        [], "--set", metavar="FIELD=VALUE", help="override one field (dotted path, YAML value); repeatable"
    ),
    gpu: str = typer.Option(None, help="GPU type: a100-40gb, a100-80gb, h100-80gb, a10g-24gb, rtx3090-24gb"),
    gpus: int = typer.Option(None, min=1, help="GPUs in the pool (default: the cluster's, with --cluster)"),
    cluster: Path = typer.Option(None, help="cluster.yaml: the GPU type and count of the node types a unit fits"),
    mfu: float = typer.Option(0.3, min=0.001, max=1.0, help="model FLOPs utilisation the GPU-hours assume"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as one JSON object"),
) -> None:
    """Plan a study: its trials, units and packs; one unit's memory (weights, trainable state, activations)
    in the unit's precision; how many units fit a GPU; the study's FLOPs; GPU-hours at ``--mfu`` and the wall
    time on the pool. Nothing is loaded but the model's config. Exit 2, with the numbers, when a unit cannot
    fit the GPU share it reserves."""
    import yaml
    from rich.console import Console
    from rich.table import Table

    from raysem.models.catalog import ModelError
    from raysem.service.estimate import GPUS, PlanError, plan_study
    from raysem.service.job import parse_sets
    from raysem.service.spec import SpecError, load_spec

    if gpu is not None and gpu not in GPUS:
        typer.echo(f"raysem: unknown --gpu {gpu!r}; GPUs: {', '.join(GPUS)}", err=True)
        raise typer.Exit(2)
    try:
        loaded = load_spec(spec, quick=quick, overrides=parse_sets(sets))
        layout = yaml.safe_load(cluster.read_text()) if cluster else None
        made = plan_study(loaded, gpu=gpu, gpus=gpus, mfu=mfu, cluster=layout)
    except (SpecError, PlanError, ModelError, OSError) as exc:
        typer.echo(f"raysem: plan refused: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(made.to_dict(), default=str))
        return
    table = Table(title=f"{made.name}: {made.model} ({made.params_b:g} B parameters, {made.dtype} on {made.device})")
    table.add_column("")
    table.add_column("", justify="right")
    memory = made.unit.gib()
    rows = [
        ("trials / units / packs", f"{made.trials:,} / {made.units:,} / {made.packs:,} (pack_size {made.pack_size})"),
        (
            "tokens per fact: prompt + target",
            f"{made.tokens.prompt:.0f} + {made.tokens.target:.1f} ({made.tokens.facts} facts)",
        ),
        (f"{made.holder}: rows x tokens", f"{made.unit.rows} x {made.unit.tokens}"),
        *((f"{made.holder} {part} (GiB)", f"{value:g}") for part, value in memory.items()),
    ]
    if made.full_ft_worker and made.full_ft_worker is not made.unit:
        rows.append(("DeepSpeed worker total (GiB)", f"{made.full_ft_worker.gib()['total']:g}"))
    if made.gpu:
        rows += [
            ("GPU", f"{made.gpu.name} ({made.gpu.memory_gb:g} GB, {made.gpu.peak_tflops:g} TFLOP/s)"),
            (f"{made.holder}s that fit one GPU", f"{made.units_per_gpu} (resources.gpu {made.gpu_share:g})"),
        ]
    rows.append(("study FLOPs", f"{made.flops:.3g}"))
    if made.gpu_hours is not None and made.wall_hours is not None:
        rows += [
            (f"GPU-hours at MFU {made.mfu:g}", f"{made.gpu_hours:,.3g}"),
            (f"wall time on {made.gpus} GPUs (h)", f"{made.wall_hours:,.3g}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    for note in made.notes:
        console.print(f"[dim]{note}[/dim]")
