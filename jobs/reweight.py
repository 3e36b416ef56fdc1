"""§3.2 / Tables 3–4: the semantic-distance re-weighted loss, γ = 0 against γ > 0 on paired samplings.

Run on a cluster: `ray job submit --working-dir . -- python jobs/reweight.py --spec jobs/reweight.yaml`;
locally in minutes: `python jobs/reweight.py --spec jobs/reweight.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
