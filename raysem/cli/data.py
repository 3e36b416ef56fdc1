"""``raysem data``: fetch the canonical dataset files and inspect any dataset raysem can load."""

from __future__ import annotations

import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from raysem.data.datasets import DATASET_NAMES, IncompleteRecordWarning, SkippedRecordWarning, load_facts
from raysem.data.facts import DatasetError
from raysem.data.fetch import SOURCES, FetchError, fetch_dataset

data_app = typer.Typer(help="Fetch and inspect knowledge datasets.", no_args_is_help=True)

FetchName = Enum("FetchName", {name: name for name in SOURCES}, type=str)  # type: ignore[misc]  # built from SOURCES


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@data_app.command()
def fetch(
    name: Annotated[FetchName, typer.Argument(help="Dataset to download.")],
    dest: Annotated[Path | None, typer.Option(help="Folder to write into (default: the raysem cache).")] = None,
    base_url: Annotated[str | None, typer.Option(help="Download from this base URL instead of the mirrors.")] = None,
) -> None:
    """Download a dataset file from the ROME project and verify its sha256."""
    typer.echo(f"fetching {name.value} ...", err=True)
    try:
        path = fetch_dataset(name.value, dest=dest, base_url=base_url)
    except (FetchError, OSError) as exc:
        _fail(str(exc))
    typer.echo(str(path))


@data_app.command()
def show(
    dataset: Annotated[str, typer.Argument(help="zsre, counterfact, knowedit, worldfacts, worldfacts-cf, or a path.")],
    path: Annotated[Path | None, typer.Option(help="File to read for a named dataset.")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Read only the first N records.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: count, format, sample.")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Leave out invalid records instead of failing.")] = False,
    samples: Annotated[int, typer.Option(min=0, help="How many facts to show.")] = 3,
) -> None:
    """Load and validate a dataset; print its size, format and a few facts."""
    if path is not None and dataset not in DATASET_NAMES:
        _fail(f"--path applies to a dataset name ({', '.join(DATASET_NAMES)}), not to {dataset!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SkippedRecordWarning)
            warnings.simplefilter("always", IncompleteRecordWarning)
            if path is not None:
                facts = load_facts(path, limit=limit, name=dataset, skip_invalid=skip_invalid)
            else:
                facts = load_facts(dataset, limit=limit, skip_invalid=skip_invalid)
    except (DatasetError, OSError) as exc:
        _fail(str(exc))
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    sample = facts.facts[:samples]
    if as_json:
        payload = {
            "name": facts.name,
            "count": len(facts),
            "format": facts.format,
            "sha256": facts.sha256,
            "sample": [f.to_dict() for f in sample],
        }
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    console = Console()
    console.print(f"[bold]{facts.name}[/]: {len(facts):,} facts, format [cyan]{facts.format}[/], sha256 {facts.sha256}")
    table = Table(
        "id", "prompt", "target", "true answer", "N/O/P", caption="N/O/P: rephrasings / locality / portability probes"
    )
    for f in sample:
        counts = f"{len(f.rephrasings)}/{len(f.locality)}/{len(f.portability)}"
        table.add_row(f.id, f.prompt, f.target, f.true_answer or "", counts)
    console.print(table)
