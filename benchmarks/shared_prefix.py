"""Evaluation and training with and without the shared prompt prefix, side by side in one run.

The few-shot prompt's exemplars are the same first ~90 tokens of every prompt. For the first
``--facts`` facts of a dataset and the embedded model:

- evaluation: the questions a trial's evaluation decodes (prompts, rephrasings, locality and
  portability probes, each with its answer budget), answered through ``greedy_answers`` from every
  row's whole prompt (left-padded) and from one KV cache of the shared prefix;
- training: ``--steps`` LoRA steps (forward and backward of the loss on batches of ``--batch-size``
  facts, the default trial's method) from whole prompts and from the shared prefix.

Prints seconds, ratios and whether the answers (and losses) agree, then one JSON object.

    python benchmarks/shared_prefix.py --facts 60
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from raysem.data.datasets import load_facts
from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.encoding import encode_targets, target_logits
from raysem.models.generate import greedy_answers
from raysem.models.kv_cache import shared_prefix_length
from raysem.models.loader import load_model
from raysem.semantics.evaluate import ANSWER_KINDS, fact_questions
from raysem.semantics.loss import reweighted_loss
from raysem.training.config import TrialConfig
from raysem.training.methods import attach


def evaluation(lm, facts, batch_size: int) -> dict:
    rows = [
        q
        for f in facts
        for kind in ANSWER_KINDS
        for q in fact_questions(lm, f, lm.answer_budget(f.prompt, f.target), kind)
    ]
    questions, budgets = [q for q, _ in rows], [b for _, b in rows]
    seconds, answers = {}, {}
    with torch.no_grad():
        for share in (False, True):
            start = time.perf_counter()
            answers[share] = greedy_answers(lm, questions, budgets, batch_size, share_prefix=share)
            seconds[share] = time.perf_counter() - start
    same = sum(a.raw == b.raw for a, b in zip(answers[False], answers[True]))
    return {
        "questions": len(questions),
        "whole_s": seconds[False],
        "shared_s": seconds[True],
        "speedup": seconds[False] / seconds[True],
        "identical_answers": same,
    }


def training(lm, facts, steps: int, batch_size: int) -> dict:
    cfg = TrialConfig(batch_size=batch_size)
    batches = [facts[(i * batch_size) % len(facts) :][:batch_size] for i in range(steps)]
    seconds, losses = {}, {}
    with attach(lm.model, cfg) as attachment:
        params = attachment.parameters()
        for share in (False, True):
            losses[share] = []
            start = time.perf_counter()
            for batch_facts in batches:
                batch = encode_targets(
                    lm, [f.prompt for f in batch_facts], [f.target for f in batch_facts], share_prefix=share
                )
                loss = reweighted_loss(
                    target_logits(lm.model, batch), batch.labels, [0.5] * len(batch_facts), 0.0, reduction="mean"
                )
                loss.backward()
                for p in params:
                    p.grad = None
                losses[share].append(loss.item())
            seconds[share] = time.perf_counter() - start
    gap = max(abs(a - b) / abs(a) for a, b in zip(losses[False], losses[True]))
    return {
        "steps": steps,
        "batch_size": batch_size,
        "whole_s": seconds[False],
        "shared_s": seconds[True],
        "speedup": seconds[False] / seconds[True],
        "max_relative_loss_gap": gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dataset", default="zsre")
    parser.add_argument("--facts", type=int, default=60)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    lm = load_model(args.model)
    facts = load_facts(args.dataset, limit=args.facts).facts
    ids = [lm.tokenizer(lm.format_prompt(f.prompt), add_special_tokens=False)["input_ids"] for f in facts]
    summary = {
        "model": lm.name,
        "dataset": args.dataset,
        "facts": len(facts),
        "prompt_tokens_mean": sum(map(len, ids)) / len(ids),
        "shared_prefix_tokens": shared_prefix_length(ids),
        "evaluation": evaluation(lm, facts, args.eval_batch_size),
        "training": training(lm, facts, args.steps, args.batch_size),
    }
    ev, tr = summary["evaluation"], summary["training"]
    print(f"shared prefix: {summary['shared_prefix_tokens']} of {summary['prompt_tokens_mean']:.0f} prompt tokens")
    print(
        f"evaluation, {ev['questions']} questions: {ev['whole_s']:.1f} s whole prompts, {ev['shared_s']:.1f} s shared prefix, "
        f"{ev['speedup']:.2f}x; {ev['identical_answers']}/{ev['questions']} answers identical"
    )
    print(
        f"training, {tr['steps']} LoRA steps of {tr['batch_size']} facts: {tr['whole_s']:.1f} s whole prompts, "
        f"{tr['shared_s']:.1f} s shared prefix, {tr['speedup']:.2f}x; losses agree to {tr['max_relative_loss_gap']:.1e}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
