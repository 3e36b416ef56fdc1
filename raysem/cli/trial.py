"""``raysem trial``: sample K facts, optionally filter the training set, run one trial, print its metrics."""

from __future__ import annotations

import json
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from raysem.cli import options
from raysem.data.facts import DatasetError, Fact, FactSet
from raysem.models.catalog import DEFAULT_MODEL, ModelError
from raysem.training.config import METHODS, TrialConfig

trial_app = typer.Typer(help="Run one knowledge-learning trial.")

JSON_KEYS = ("accuracy", "token_accuracy", "generality", "locality", "deviation_rate", "n_facts", "wall_s")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _base_records(lm, dataset: FactSet, sample: list[Fact], whole: bool) -> dict:
    """Base records from the cached distance table of the whole dataset when ``whole`` or when such a
    table exists already, else from a table of the sampled facts alone."""
    from raysem.semantics.tables import base_lookup, distance_table, resolve_facts, table_path

    if whole or table_path(lm, dataset).is_file():
        frame, _ = distance_table(lm, dataset, progress=False)
    else:
        frame, _ = distance_table(lm, resolve_facts(sample), progress=False)
    return base_lookup(frame)


def _filtered(sample: list[Fact], dataset: FactSet, base: dict, lam: float, replace: float) -> list[Fact]:
    from raysem.semantics.filter import replace_training_set

    chosen = {f.id for f in sample}
    pool = [f for f in dataset.facts if f.id not in chosen]
    result = replace_training_set(
        "filter",
        [f.id for f in sample],
        [base[f.id]["dist_old"] for f in sample],
        [f.id for f in pool],
        [base[f.id]["dist_old"] for f in pool],
        replace=replace,
        lam=lam,
    )
    by_id = {f.id: f for f in dataset.facts}
    return [by_id[i] for i in result.train_ids]


@trial_app.command("trial")
def trial(
    dataset: str = typer.Option(
        ..., "--dataset", help="zsre, counterfact, knowedit, worldfacts, worldfacts-cf, or a file."
    ),
    facts: int = typer.Option(..., "--facts", min=1, help="How many facts to learn (K)."),
    method: str = typer.Option("lora", "--method", help=f"One of {', '.join(METHODS)}."),
    gamma: float | None = typer.Option(None, "--gamma", help="Re-weighting strength γ (Eq. 5); 0 = plain loss."),
    filter_lambda: float | None = typer.Option(None, "--filter-lambda", help="Filter variance weight λ (Eq. 4)."),
    replace: float | None = typer.Option(None, "--replace", help="Share ρ of the training set the filter replaces."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seeds the sampling and the trial."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Embedded model name, local folder or Hugging Face id."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (default: the config default)."),
    lr: float | None = typer.Option(
        None, "--lr", help="Learning rate (default: the method's, raysem.training.config.DEFAULT_LR)."
    ),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw or sgd (AdamW cancels γ on a single fact)."),
    prompt_style: str = options.PROMPT_STYLE,
    answer_budget: str = options.ANSWER_BUDGET,
    free_tokens: int = options.FREE_TOKENS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the headline metrics."),
) -> None:
    """Sample K facts (seeded), learn them with one method, and report accuracy, generality and locality.

    With --filter-lambda and --replace the training set is first filtered (Eq. 4) against the rest of
    the dataset; the test set stays the K sampled facts.
    """
    if (filter_lambda is None) != (replace is None):
        _fail("--filter-lambda and --replace go together: give both to filter the training set, or neither")
    if replace is not None and not 0.0 <= replace <= 1.0:
        _fail(f"--replace (ρ) must be in [0, 1], got {replace}")
    if filter_lambda is not None and filter_lambda < 0:
        _fail(f"--filter-lambda (λ) must be >= 0, got {filter_lambda}")
    overrides = {"gamma": gamma, "steps": steps, "lr": lr}
    prompting = options.prompting(prompt_style, answer_budget, free_tokens)
    try:
        cfg = TrialConfig(
            method=method, seed=seed, optimizer=optimizer, **{k: v for k, v in overrides.items() if v is not None}
        )
    except ValueError as exc:
        _fail(f"invalid trial settings: {exc}")

    from raysem.data.datasets import load_facts
    from raysem.data.sampling import sample_fact_sets
    from raysem.training.trial import NonFiniteLossError, ResidentModel, run_trial

    try:
        fact_set = load_facts(dataset)
        sample = sample_fact_sets(fact_set.facts, facts, 1, seed)[0]
        resident = ResidentModel(model, prompting=prompting)
        base = _base_records(resident.lm, fact_set, sample, whole=filter_lambda is not None)
        train = (
            sample
            if filter_lambda is None or replace is None
            else _filtered(sample, fact_set, base, filter_lambda, replace)
        )
        result = run_trial(resident, train, sample, base, cfg, trial_id=f"{fact_set.name}-k{facts}-s{seed}")
    except (DatasetError, ModelError, NonFiniteLossError, ValueError, KeyError) as exc:
        _fail(str(exc))

    agg = result.aggregates
    if as_json:
        typer.echo(json.dumps({key: agg[key] for key in JSON_KEYS}))
        return
    table = Table(title=f"{method} on {facts} {fact_set.name} facts (seed {seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in agg.items():
        table.add_row(key, f"{value:.4g}")
    Console().print(table)
