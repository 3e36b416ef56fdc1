"""``raysem spec``: the study spec's JSON schema, and checking a spec without running it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

spec_app = typer.Typer(help="Study specs: the schema, and a check that runs nothing.", no_args_is_help=True)


@spec_app.command("schema")
def schema() -> None:
    """Print the JSON schema of a study spec: every field, its type, default and description."""
    from raysem.service.spec import StudySpec

    typer.echo(json.dumps(StudySpec.model_json_schema(), indent=2))


@spec_app.command("check")
def check(
    spec: Path = typer.Argument(..., help="study spec YAML"),
    quick: bool = typer.Option(False, help="apply the spec's quick overrides"),
    sets: list[str] = typer.Option(
        [], "--set", metavar="FIELD=VALUE", help="override one field (dotted path, YAML value); repeatable"
    ),
) -> None:
    """Validate a spec as a study would before Ray starts (every grid point, search bound, quick override and
    packing rule; the model's architecture and, under ``chat``, its chat template; a unit's memory against
    its GPU share when the spec declares ``resources.gpu_memory_gb``),
    and print its trials and Tune units as JSON. Exit 2 with the field named when it is bad."""
    from raysem.models.catalog import ModelError
    from raysem.models.loader import check_model
    from raysem.service.estimate import check_fit
    from raysem.service.job import parse_sets
    from raysem.service.planning import count_trials, expand_units
    from raysem.service.spec import SpecError, load_spec

    try:
        loaded = load_spec(spec, quick=quick, overrides=parse_sets(sets))
        check_model(loaded.model, loaded.prompt_style)
        check_fit(loaded)
    except ModelError as exc:
        typer.echo(f"raysem: spec error: model: {exc}", err=True)
        raise typer.Exit(2) from None
    except SpecError as exc:
        typer.echo(f"raysem: spec error: {exc}", err=True)
        raise typer.Exit(2) from None
    units = len(expand_units(loaded)) if loaded.search.algorithm == "grid" else loaded.search.num_samples
    typer.echo(json.dumps({"name": loaded.name, "kind": loaded.kind, "trials": count_trials(loaded), "units": units}))
