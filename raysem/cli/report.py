"""``raysem report``: the paper's figures and tables (PNG, Markdown, HTML) from a study's MLflow experiment."""

from __future__ import annotations

from pathlib import Path

import typer

report_app = typer.Typer(help="Build the figures and tables of a study from MLflow.")


@report_app.command("report")
def report(
    experiment: str = typer.Option(..., "--experiment", "-e", help="MLflow experiment (= study name) to report on."),
    tracking_uri: str | None = typer.Option(
        None,
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (default: MLflow's own default).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Folder for the report (default: reports/<experiment>)."),
    compare: str | None = typer.Option(
        None, "--compare", help="A second experiment whose headline metrics to compare."
    ),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log the report to the study's parent run."),
) -> None:
    """Write report.md, a self-contained report.html and the PNG figures; log them to MLflow."""
    from raysem.report.build import build_report
    from raysem.report.data import ReportError

    try:
        summary = build_report(
            experiment, tracking_uri=tracking_uri, out_dir=out, compare=compare, log_to_mlflow=not no_log
        )
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(summary.describe())
