"""γ = 0 calibration of learning rate × steps on ZsRE (single facts and 100-fact sets), then the report.

Run on a cluster: `ray job submit --working-dir . -- python jobs/calibration.py --spec jobs/calibration.yaml`;
locally in minutes: `python jobs/calibration.py --spec jobs/calibration.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
