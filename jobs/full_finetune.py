"""Full fine-tuning baselines with DeepSpeed ZeRO-2 through Ray Train on the nodes that carry the A100 resource.

Run on a cluster: `ray job submit --working-dir . -- python jobs/full_finetune.py --spec jobs/full_finetune.yaml`;
locally in minutes: `python jobs/full_finetune.py --spec jobs/full_finetune.yaml --quick`.
"""

from raysem.service.job import run_as_script

run_as_script(__name__, __doc__)
