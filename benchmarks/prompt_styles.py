"""Which prompt style makes the base model answer with entities? Side by side, per dataset.

For each prompt style and dataset, the distance table of the first ``--facts`` facts under the
embedded model (cached like any table): the share of y_old that start like a sentence
(``raysem.semantics.metrics.is_sentence_preface``), the share of empty y_old, the mean and sd of
the target distance, and the tokens of one training sequence (prompt + target), with its ratio
to the chat style's. Prints a Markdown table, then one JSON object.

    python benchmarks/prompt_styles.py --facts 500
"""

from __future__ import annotations

import argparse
import json
import time

from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.prompts import PROMPT_STYLES, Prompting
from raysem.semantics.tables import distance_table, summary


def measure(model: str, datasets: list[str], styles: list[str], facts: int) -> list[dict]:
    rows = []
    for dataset in datasets:
        for style in styles:
            start = time.perf_counter()
            frame, path = distance_table(model, dataset, limit=facts, prompting=Prompting(style), progress=False)  # type: ignore[arg-type]
            stats = summary(frame)
            rows.append(
                {
                    "dataset": dataset,
                    "style": style,
                    "facts": stats["count"],
                    "preface": stats["preface"] / stats["count"],
                    "empty": stats["empty"] / stats["count"],
                    "mean": stats["mean"],
                    "sd": stats["std"],
                    "train_tokens": stats["train_tokens"],
                    "seconds": round(time.perf_counter() - start, 1),
                    "table": str(path),
                }
            )
    for row in rows:
        chat = next((r for r in rows if r["dataset"] == row["dataset"] and r["style"] == "chat"), None)
        row["tokens_vs_chat"] = row["train_tokens"] / chat["train_tokens"] if chat else float("nan")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--facts", type=int, default=500)
    parser.add_argument("--datasets", nargs="+", default=["zsre", "counterfact"])
    parser.add_argument("--styles", nargs="+", default=list(PROMPT_STYLES), choices=PROMPT_STYLES)
    args = parser.parse_args()
    rows = measure(args.model, args.datasets, args.styles, args.facts)
    print(
        "| dataset | style | facts | sentence preface | empty | target distance mean (sd) | tokens / training sequence | × chat |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['style']} | {r['facts']} | {r['preface']:.1%} | {r['empty']:.1%} | "
            f"{r['mean']:.3f} ({r['sd']:.3f}) | {r['train_tokens']:.1f} | {r['tokens_vs_chat']:.2f} |"
        )
    print(json.dumps({"model": args.model, "rows": rows}))


if __name__ == "__main__":
    main()
