"""A γ × λ sweep with Optuna: re-weighting strength and filter variance weight, maximising 100-fact accuracy.

Run on a cluster: `ray job submit --working-dir . -- python jobs/gamma_lambda_sweep.py --spec jobs/gamma_lambda_sweep.yaml`;
locally in minutes: `python jobs/gamma_lambda_sweep.py --spec jobs/gamma_lambda_sweep.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
