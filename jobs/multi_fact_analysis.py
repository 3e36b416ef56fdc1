"""§2.3 / Figures 5–6 / Table 2: 100-fact LoRA trials with Frobenius and feature analyses, accuracy against set mean and variance.

Run on a cluster: `ray job submit --working-dir . -- python jobs/multi_fact_analysis.py --spec jobs/multi_fact_analysis.yaml`;
locally in minutes: `python jobs/multi_fact_analysis.py --spec jobs/multi_fact_analysis.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
