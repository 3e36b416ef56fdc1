"""Packed LoRA training eager and under ``torch.compile``, side by side in one run: what compiling costs and saves.

K single-fact trials (ZsRE facts 0..K-1, seeds 0..K-1, the default trial config) train as one pack
(``train_packed``: length-sorted micro-batches, the summed per-trial losses, one AdamW step), first
eagerly, then with the decoder stack's forward compiled by inductor (``dynamic=True``, so the
micro-batches' varying lengths share one graph). The first compiled pack is timed apart: its time
less an eager pack's is the compile cost. Prints seconds per pack step, the compiled speedup, the
compile cost, and the trials after which compiling has paid for itself (at ``--trial-steps`` steps
a trial), then one JSON object.

    python benchmarks/compile_packed.py --pack-size 16 --steps 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from raysem.bench.training import bench_config, bench_facts
from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.loader import load_model
from raysem.training.config import TrialConfig
from raysem.training.packed import attach_packed_lora, train_packed
from raysem.training.trial import ResidentModel


def pack(lm, facts, base, steps: int) -> tuple[float, list[list[float]]]:
    """Seconds and loss curves of one pack trained for ``steps`` steps."""
    cfgs = [bench_config(steps, i) for i in range(len(facts))]
    packed = attach_packed_lora(lm.model, [c.seed for c in cfgs], cfgs[0].rank, cfgs[0].alpha, cfgs[0].target_modules)
    try:
        start = time.perf_counter()
        run = train_packed(lm, packed, facts, cfgs, base)
        return time.perf_counter() - start, run.loss_curves
    finally:
        packed.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--pack-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="steps of each timed pack")
    parser.add_argument(
        "--trial-steps", type=int, default=TrialConfig().steps, help="steps of a real trial, for the break-even count"
    )
    args = parser.parse_args()

    lm = load_model(args.model)
    facts = bench_facts(args.pack_size)
    base = ResidentModel(lm).base_records(facts)
    pack(lm, facts, base, 1)  # warm-up
    eager_s, eager_losses = pack(lm, facts, base, args.steps)
    one_eager_s, _ = pack(lm, facts, base, 1)

    decoder = lm.model.get_decoder()
    decoder.forward = torch.compile(decoder.forward, dynamic=True)
    first_s, _ = pack(lm, facts, base, 1)
    compiled_s, compiled_losses = pack(lm, facts, base, args.steps)

    eager_step, compiled_step = eager_s / args.steps, compiled_s / args.steps
    compile_s = first_s - one_eager_s
    saved_per_trial = (eager_step - compiled_step) / args.pack_size * args.trial_steps
    gap = max(abs(a - b) / abs(a) for ca, cb in zip(eager_losses, compiled_losses) for a, b in zip(ca, cb))
    summary = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "pack_size": args.pack_size,
        "steps": args.steps,
        "eager_step_s": eager_step,
        "compiled_step_s": compiled_step,
        "step_speedup": eager_step / compiled_step,
        "compile_s": compile_s,
        "break_even_trials": compile_s / saved_per_trial if saved_per_trial > 0 else None,
        "max_relative_loss_gap": gap,
    }
    print(
        f"K={args.pack_size}, {summary['threads']} threads: eager {eager_step:.2f} s a pack step, compiled {compiled_step:.2f} s "
        f"({summary['step_speedup']:.3f}×); compiling took {compile_s:.0f} s, repaid after "
        f"{summary['break_even_trials'] or float('inf'):,.0f} trials of {args.trial_steps} steps; loss gap {gap:.1e}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
