"""Options shared by several commands: how questions are prompted and answers budgeted."""

from __future__ import annotations

import typer

from raysem.models.prompts import DEFAULT_PROMPT_STYLE, PROMPT_STYLES, Prompting

PROMPT_STYLE = typer.Option(
    DEFAULT_PROMPT_STYLE,
    "--prompt-style",
    help=f"How questions are prompted: {', '.join(PROMPT_STYLES)} (raysem.models.prompts).",
)
ANSWER_BUDGET = typer.Option(
    "target", "--answer-budget", help="target: the reference answer's token count (the paper's); free: --free-tokens."
)
FREE_TOKENS = typer.Option(
    24, "--free-tokens", min=1, help="Answer budget under --answer-budget free (cut at the first newline)."
)


def prompting(style: str, budget: str, free_tokens: int) -> Prompting:
    """The ``Prompting`` the options name; a bad value exits with the accepted ones."""
    try:
        return Prompting(style, budget, free_tokens)  # type: ignore[arg-type]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
