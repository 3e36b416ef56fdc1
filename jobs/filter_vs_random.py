"""§3.1 / Figure 7: the semantic-distance data filter against random replacement over ρ.

Run on a cluster: `ray job submit --working-dir . -- python jobs/filter_vs_random.py --spec jobs/filter_vs_random.yaml`;
locally in minutes: `python jobs/filter_vs_random.py --spec jobs/filter_vs_random.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
