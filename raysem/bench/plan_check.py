"""``raysem bench plan``: ``raysem study plan``'s unit memory and time against a real unit measured here.

A unit as a Tune worker runs it, without Ray: the resident model in the plan's precision, the base records of
its facts, then its pack of single-fact LoRA trials (``run_packed_trials``) or one k-fact trial (``run_trial``).
Each model runs in a fresh process, its peak resident memory (``VmHWM``) reset just before the model is
loaded, so that the peak is the unit's alone; the measured memory is that peak less the process's memory
before the model was loaded. The process runs with
glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``), so that every large tensor is mapped and unmapped
on its own: resident memory then follows the tensors alive, as a GPU allocator's would, instead of keeping
a freed activation's pages in the heap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from raysem.service.spec import StudySpec


def reset_peak() -> None:
    """Start the process's peak resident memory afresh (Linux: ``/proc/self/clear_refs``), so that what ran
    before the unit (imports, the plan itself) does not set it."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """Peak resident bytes since :func:`reset_peak` (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


KEPT_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
"""What the measuring process inherits (and ``RAYSEM_*``, ``HF_*``): nothing a caller's libraries set
(Ray's, DeepSpeed's), so that it loads what a unit loads."""


def measure_unit(spec: StudySpec) -> dict[str, Any]:
    """Run the spec's largest unit once on the CPU; its memory above the process's start, seconds and FLOPs."""
    import peft  # noqa: F401  (libraries are loaded before the baseline; the plan's runtime allowance covers them)
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401

    from raysem.bench.training import matmul_peak
    from raysem.data.datasets import load_facts
    from raysem.models.device import planned_dtype
    from raysem.service.estimate import base_flops, fact_tokens, meta_model, plan_study, study_work, trial_flops
    from raysem.training.flops import ModelShape
    from raysem.training.packed import run_packed_trials
    from raysem.training.trial import ResidentModel, run_trial

    torch.set_num_threads(1)
    plan = plan_study(spec)
    work = max(study_work(spec), key=lambda w: w.trials if w.packed else w.k)
    facts = load_facts(spec.dataset, limit=spec.data_limit).facts
    before = psutil.Process().memory_info().rss
    reset_peak()
    resident = ResidentModel(spec.model, dtype=planned_dtype(spec.precision, gpu=False), prompting=spec.prompting)
    started = time.perf_counter()
    if work.packed:
        chosen = facts[: work.trials]
        base = resident.base_records(chosen)
        run_packed_trials(resident.lm, chosen, [work.cfg] * len(chosen), base, resident.embedder)
        trials = len(chosen)
    else:
        chosen = facts[: work.k]
        base = resident.base_records(chosen)
        run_trial(resident, chosen, chosen, base, work.cfg)
        trials = 1
    seconds = time.perf_counter() - started
    peak = peak_rss()
    tokens, model = fact_tokens(spec, []), meta_model(spec.model)
    shape = ModelShape.of_model(model, work.cfg)
    flops = base_flops(shape, len(chosen), tokens) + trials * trial_flops(shape, work, tokens)
    gflops = matmul_peak().gflops
    return {
        "model": spec.model,
        "unit": f"{trials} packed single-fact trials" if work.packed else f"one {work.k}-fact trial",
        "planned_gib": plan.unit.total / 2**30,
        "measured_gib": (peak - before) / 2**30,
        "planned_parts_gib": plan.unit.gib(),
        "seconds": seconds,
        "planned_flops": flops,
        "matmul_gflops": gflops,
        "planned_s_at_matmul_peak": flops / (gflops * 1e9),
    }


def run_plan_check(spec_path: Path, models: list[str], overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """``measure_unit`` for each model (embedded name or folder), each in a fresh process."""
    rows = []
    for model in models:
        command = [
            sys.executable,
            "-c",
            "import json, sys; from raysem.bench.plan_check import child; child(sys.argv[1:])",
            str(spec_path),
            json.dumps({**overrides, "model": model}),
        ]
        env = {k: v for k, v in os.environ.items() if k in KEPT_ENV or k.startswith(("RAYSEM_", "HF_"))}
        env |= {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
        out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"measuring a unit of {model} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def child(argv: list[str]) -> None:
    """The measuring process: one spec path and a JSON object of overrides."""
    from raysem.service.spec import load_spec

    spec = load_spec(argv[0], overrides=json.loads(argv[1]))
    print(json.dumps(measure_unit(spec)))
