"""Finding 4's planned contrasts (docs/reproduction/plan.md) from the f4-reweight trials.csv: γ = 1 and 2 at lr 0.1
against γ = 0 at lr 0.1 and against the lr-matched control (γ = 0 at lr × E[1 + γλ]), paired by sampling, for all
facts and split at λ > 0.25 (extreme distances) against the rest. One single-fact trial is one fact.

    python docs/reproduction/f4_contrasts.py [docs/reproduction/f4-reweight/trials.csv]
"""

from __future__ import annotations

import sys

import pandas as pd

from raysem.report.analysis import EXTREME_LAMBDA
from raysem.report.stats import paired_difference
from raysem.semantics.embedding import reweight_coefficient

LR, CONTROL = 0.1, {1.0: 0.128, 2.0: 0.156}


def main(path: str) -> None:
    trials = pd.read_csv(path)
    trials = trials[trials["status"] == "FINISHED"]
    # one fact a trial: its λ from the trial's dist_mean (an empty base answer counts as the farthest, λ = 1)
    lam = trials["dist_mean"].map(reweight_coefficient)
    trials = trials.assign(extreme=lam > EXTREME_LAMBDA)

    def arm(gamma: float, lr: float, rows: pd.Series | None = None) -> dict[int, float]:
        part = trials[(trials["gamma"] == gamma) & (trials["lr"].round(6) == lr)]
        if rows is not None:
            part = part[rows.loc[part.index]]
        return dict(zip(part["sampling"], part["accuracy"]))

    print(
        f"{len(trials)} trials; facts with λ > {EXTREME_LAMBDA}: {int(trials.drop_duplicates('sampling')['extreme'].sum())}"
    )
    print("| contrast | facts | pairs | mean a | mean b | Δ (pp) [95% CI] | p |")
    print("|---|---|---|---|---|---|---|")
    for gamma, control in CONTROL.items():
        for name, rows in (("all", None), ("extreme", trials["extreme"]), ("rest", ~trials["extreme"])):
            for against, base in (
                (f"γ = 0, lr {LR}", arm(0.0, LR, rows)),
                (f"γ = 0, lr {control}", arm(0.0, control, rows)),
            ):
                d = paired_difference(base, arm(gamma, LR, rows))
                print(
                    f"| γ = {gamma:g} − {against} | {name} | {d['n_pairs']} | {100 * d['mean_a']:.1f}% | "
                    f"{100 * d['mean_b']:.1f}% | {100 * d['delta']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | "
                    f"{d['p_value']:.3g} |"
                )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/reproduction/f4-reweight/trials.csv")
