"""Evaluation's greedy decoding with and without the shared prompt prefix, side by side in one run.

The questions a trial's evaluation decodes for the first ``--facts`` facts of a dataset (prompts,
rephrasings, locality and portability probes, each with its answer budget), answered by the embedded
model through ``greedy_answers`` twice: every row from its whole prompt (left-padded), and from one KV
cache of the prompts' shared prefix. Prints the seconds of each, their ratio, whether the answers are
identical, then one JSON object.

    python benchmarks/eval_prefix.py --facts 100
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from raysem.data.datasets import load_facts
from raysem.models.generate import greedy_answers, shared_prefix_length
from raysem.models.loader import DEFAULT_MODEL, load_model
from raysem.semantics.evaluate import ANSWER_KINDS, fact_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dataset", default="zsre")
    parser.add_argument("--facts", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    lm = load_model(args.model)
    facts = load_facts(args.dataset, limit=args.facts).facts
    rows = [q for f in facts for kind in ANSWER_KINDS for q in fact_questions(lm, f, lm.answer_budget(f.prompt, f.target), kind)]
    questions, budgets = [q for q, _ in rows], [b for _, b in rows]
    ids = [lm.tokenizer(lm.format_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]
    torch.set_grad_enabled(False)
    seconds, answers = {}, {}
    for variant, share in (("whole prompts", False), ("shared prefix", True)):
        start = time.perf_counter()
        answers[variant] = greedy_answers(lm, questions, budgets, args.batch_size, share_prefix=share)
        seconds[variant] = time.perf_counter() - start
    same = sum(a.raw == b.raw for a, b in zip(answers["whole prompts"], answers["shared prefix"]))
    ratio = seconds["whole prompts"] / seconds["shared prefix"]
    summary = {
        "model": lm.name, "dataset": args.dataset, "facts": len(facts), "questions": len(questions),
        "prompt_tokens_mean": sum(map(len, ids)) / len(ids), "shared_prefix_tokens": shared_prefix_length(ids),
        "seconds": seconds, "speedup": ratio, "identical_answers": same,
    }  # fmt: skip
    for variant, value in seconds.items():
        print(f"{variant:>14}: {value:7.1f} s")
    print(f"{'speedup':>14}: {ratio:7.2f}x  ({summary['shared_prefix_tokens']} shared of {summary['prompt_tokens_mean']:.0f} prompt tokens; "
          f"{same}/{len(questions)} answers identical)")  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
