"""§2.2 / Figure 4 / Table 1: 1,000 single-fact LoRA trials, away-from-target deviation and relative distance per distance bin.

Run on a cluster: `ray job submit --working-dir . -- python jobs/single_fact_deviation.py --spec jobs/single_fact_deviation.yaml`;
locally in minutes: `python jobs/single_fact_deviation.py --spec jobs/single_fact_deviation.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
