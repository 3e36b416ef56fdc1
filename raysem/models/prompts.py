"""How a question becomes a prompt, how an answer is joined to it, and how long an answer may run.

Three prompt styles, one per study, used alike to train and to answer (y_old, y_new, generality,
locality, portability, distance tables):

- ``chat``: the model's chat template around the bare question (the raw question for a model
  without one); the answer follows the assistant header with nothing in between.
- ``fewshot``: a raw completion prompt of ``FEWSHOT_EXEMPLARS`` as ``Q: …`` / ``A: …`` pairs, then
  ``Q: <question>`` and ``A:``; the answer follows after one space and is cut at its first
  newline. A small chat model answers a chat prompt with a sentence ("The IAAF …"), so the
  distance there measures a preface; under ``fewshot`` it answers with the entity.
- ``zeroshot``: the raw question (after BOS, no template, no demonstrations); the answer follows after
  one space, as the knowledge-editing literature's LoRA baselines join them (the paper evaluates
  zero-shot, App. C). The answer is not cut at a newline (under the ``target`` budget).

The answer budget is the paper's by default (``target``: as many new tokens as the reference
answer has), or ``free``: up to ``free_tokens``, cut at the first newline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PromptStyle = Literal["chat", "fewshot", "zeroshot"]
PROMPT_STYLES: tuple[str, ...] = ("chat", "fewshot", "zeroshot")
AnswerBudget = Literal["target", "free"]
DEFAULT_PROMPT_STYLE: PromptStyle = "fewshot"

FEWSHOT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("What is the chemical symbol for gold?", "Au"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("In which year did the Berlin Wall fall?", "1989"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest ocean on Earth?", "Pacific Ocean"),
)
"""Fixed demonstrations of the question–answer format (general knowledge found in no raysem dataset:
``tests/models/test_prompts.py`` checks them against ZsRE, COUNTERFACT and worldfacts)."""


@dataclass(frozen=True)
class Prompting:
    """A study's prompt style and answer budget; recorded with every trial and distance table."""

    style: PromptStyle = DEFAULT_PROMPT_STYLE
    budget: AnswerBudget = "target"
    free_tokens: int = 24

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {self.style!r}")
        if self.budget not in ("target", "free"):
            raise ValueError(f"answer budget must be 'target' or 'free', got {self.budget!r}")
        if self.free_tokens < 1:
            raise ValueError(f"free_tokens must be >= 1, got {self.free_tokens}")

    @property
    def cuts_at_newline(self) -> bool:
        """Whether an answer ends at its first newline (few-shot answers and free budgets)."""
        return self.style == "fewshot" or self.budget == "free"

    def key(self) -> dict[str, object]:
        """What identifies it in cache keys, params and table metadata."""
        return {
            "prompt_style": self.style,
            "answer_budget": self.budget if self.budget == "target" else f"free:{self.free_tokens}",
        }


def fewshot_prompt(question: str) -> str:
    """The few-shot completion prompt for ``question`` (ends with ``A:``; the answer follows a space)."""
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in FEWSHOT_EXEMPLARS)
    return f"{shots}Q: {question}\nA:"


def first_line(text: str) -> str:
    """The answer up to its first newline (leading whitespace skipped first), stripped."""
    return text.lstrip().split("\n", 1)[0].strip()
