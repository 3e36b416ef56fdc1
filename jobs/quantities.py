"""Appendix D / Figure 8: accuracy against target distance for 1, 10 and 100 facts per trial.

Run on a cluster: `ray job submit --working-dir . -- python jobs/quantities.py --spec jobs/quantities.yaml`;
locally in minutes: `python jobs/quantities.py --spec jobs/quantities.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
