"""A small real study on the embedded defaults: single-fact and 10-fact LoRA trials with γ ∈ {0, 1}, then the report.

Run on a cluster: `ray job submit --working-dir . -- python jobs/quick_study.py --spec jobs/quick_study.yaml`;
locally in minutes: `python jobs/quick_study.py --spec jobs/quick_study.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
