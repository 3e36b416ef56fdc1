"""Does embedding answers with the leading space they have in context change any distance or verdict?

raysem embeds an answer standalone (``EMB("Paris")``); in training and decoding the answer follows the
prompt after a space, where a BPE tokenizer gives other tokens (``" Paris"``). For every per-fact record
of the named experiments this recomputes dist(y_old, y_t) and dist(y_new, y_t) both ways with the base
model's input embeddings, checks that the standalone way reproduces the logged distances, and prints:
how many distinct facts' dist_old move by more than ``--moved``, how many change Table 5 band, and
Figure 3's band and decile contrasts (plain multi-fact trials, exact match) and the deviation share among bad cases (Table 1)
under each embedding. Prints a Markdown table, then one JSON object.

    python benchmarks/leading_space.py --tracking-uri sqlite:///docs/reproduction/store/reproduction.db \\
        reweight accuracy-vs-distance accuracy-vs-distance-counterfact
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.loader import load_model
from raysem.report import analysis as an
from raysem.report.data import load_study, open_client
from raysem.semantics.embedding import AnswerEmbedder


def distances(embedder: AnswerEmbedder, answers: pd.Series, targets: pd.Series, space: bool) -> np.ndarray:
    """dist(answer, target) per row, each side embedded as is or after one space (empty stays empty)."""
    prefix = " " if space else ""
    a = [prefix + str(x) if isinstance(x, str) and x.strip() else "" for x in answers]
    t = [prefix + str(x) for x in targets]
    return embedder.distance(a, t)


def verdicts(records: pd.DataFrame) -> dict:
    """Figure 3's band contrasts on plain multi-fact trials and Table 1's share on single-fact ones."""
    out: dict = {}
    plain = an.plain(records)
    multi = plain[plain["k"] > 1]
    if not multi.empty:
        (row,) = an.band_contrast(multi, []).to_dict("records")
        for part in ("short", "long"):
            est = row[f"{part}_minus_medium"]
            out[f"{part}_minus_medium"] = [round(100 * v, 2) for v in (est.estimate, est.low, est.high)]
        (row,) = an.decile_contrast(multi, [], ["k"]).to_dict("records")
        for part in ("bottom", "top"):
            est = row[f"{part}_minus_middle"]
            out[f"{part}_minus_middle"] = [round(100 * v, 2) for v in (est.estimate, est.low, est.high)]
    single = plain[plain["k"] == 1]
    if not single.empty:
        frame = single.assign(deviation=single["dist_new"] > single["dist_old"])
        (row,) = an.deviation_among_bad(frame, []).to_dict("records")
        out["deviation_among_bad"] = [round(100 * v, 2) for v in row["share"]]
    return out


def analyse(experiment: str, records: pd.DataFrame, embedder: AnswerEmbedder, moved: float) -> dict:
    standalone_old = distances(embedder, records["y_old"], records["target"], space=False)
    logged = records["dist_old"].to_numpy(dtype=float)
    both = ~np.isnan(logged) & ~np.isnan(standalone_old)
    mismatch = int((np.abs(standalone_old[both] - logged[both]) > 1e-4).sum())
    spaced = records.assign(
        dist_old=distances(embedder, records["y_old"], records["target"], space=True),
        dist_new=distances(embedder, records["y_new"], records["target"], space=True),
    )
    facts = pd.DataFrame({"before": records["dist_old"], "after": spaced["dist_old"], "fact_id": records["fact_id"]})
    facts = facts.drop_duplicates("fact_id").dropna()
    shift = (facts["after"] - facts["before"]).abs()
    changed_band = int((facts["before"].map(an.band_label) != facts["after"].map(an.band_label)).sum())
    return {
        "experiment": experiment,
        "records": len(records),
        "logged_mismatch": mismatch,
        "facts": len(facts),
        "moved": int((shift > moved).sum()),
        "mean_shift": round(float(shift.mean()), 4),
        "changed_band": changed_band,
        "standalone": verdicts(records),
        "leading_space": verdicts(spaced),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--moved", type=float, default=0.05, help="a distance moves when it shifts by more")
    args = parser.parse_args()
    embedder = AnswerEmbedder.from_model(load_model(args.model))
    client = open_client(args.tracking_uri)
    rows = [analyse(e, load_study(client, e).records, embedder, args.moved) for e in args.experiments]
    print(f"| experiment | facts | dist_old moved > {args.moved:g} | band changed | standalone → leading space (pp) |")
    print("|---|---|---|---|---|")
    for r in rows:
        keys = sorted(set(r["standalone"]) | set(r["leading_space"]))
        text = "; ".join(f"{k} {r['standalone'].get(k)} → {r['leading_space'].get(k)}" for k in keys)
        print(f"| {r['experiment']} | {r['facts']} | {r['moved']} | {r['changed_band']} | {text} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
