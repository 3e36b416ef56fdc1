"""§2.1 / Figure 3: 100-fact trials with LoRA, AdaLoRA, Adapter-tuning and IA3, accuracy against target semantic distance.

Run on a cluster: `ray job submit --working-dir . -- python jobs/accuracy_vs_distance.py --spec jobs/accuracy_vs_distance.yaml`;
locally in minutes: `python jobs/accuracy_vs_distance.py --spec jobs/accuracy_vs_distance.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
