"""Throughput of single-fact LoRA trials: a process per trial, a resident model, and packed trials.

All variants run the same trials (trial i learns ZsRE fact i with seed i and the same steps) in
one run on one machine, next to the machine's dense matmul throughput (2048³; fp32 on CPU,
bf16 on CUDA), so their trials/hour and the share of that peak they reach compare directly.

- **naive**: a fresh Python process per trial (``python -m raysem.bench.training naive ...``) that loads the
  model, computes the fact's base-model answers and runs the trial (:func:`raysem.training.trial.run_trial`:
  PEFT LoRA, train, evaluate), as a one-trial-per-script experiment would.
- **resident**: the model is loaded once; base answers for all facts are computed in one batched
  pass; :func:`raysem.training.trial.run_trial` then runs the PEFT trials one after another.
- **packed**: as resident, but K trials at a time through :func:`raysem.training.packed.run_packed_trials`.

Useful FLOPs of a trial (``trial_flops``) are counted analytically from the model's shapes; padding
and recomputation are not counted. With N = Σ in·out over the decoder's linear layers, R = Σ
r·(in+out) over the LoRA target modules, L layers, d_q the attention width (heads × head dim),
d the hidden size and V the vocabulary, a forward pass over n new tokens after p cached ones costs
``2·N·n + 2·R·n + 4·L·d_q·Σ_{i=1..n}(p+i)`` (the last term: causal QKᵀ and AV), plus ``2·d·V`` per
position whose logits are computed. A training step over the fact's T prompt+target tokens with t
target tokens costs that forward (logits at the t target positions only) plus a backward of
``2·N·T`` (input gradients only: the base is frozen), ``4·R·T`` (LoRA input and weight gradients),
twice the attention term, and ``2·d·V·t``. Evaluation and base answers count every greedy
generation (prefill with logits at the last position, then one cached step per further token, to
the full token budget) and the teacher-forced token-accuracy forward.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from raysem.data.datasets import load_facts
from raysem.data.facts import Fact
from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.device import auto_dtype, synchronize
from raysem.models.loader import LoadedModel, load_model
from raysem.service.spec import StudySpec
from raysem.training.config import TrialConfig
from raysem.training.flops import trial_flops
from raysem.training.packed import DEFAULT_MICRO_BATCH, run_packed_trials
from raysem.training.trial import ResidentModel, run_trial

PACK_SIZES = (8, 16, 32, 64)
QUICK_PACK_SIZES = (8, 16)


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures."""

    model: str = DEFAULT_MODEL
    device: str | None = None
    threads: int | None = None
    """CPU threads for every variant (naive processes included); None keeps torch's default."""
    steps: int = TrialConfig().steps
    naive_trials: int = 4
    resident_trials: int = 8
    pack_sizes: tuple[int, ...] = PACK_SIZES
    matmul_size: int = 2048
    micro_batch: int | None = DEFAULT_MICRO_BATCH
    """Rows per forward/backward in packed training (None: the whole pack)."""

    @classmethod
    def quick(cls, **overrides: Any) -> BenchSettings:
        """Fewer trials and steps, K in {8, 16}."""
        values: dict[str, Any] = dict(steps=5, naive_trials=2, resident_trials=4, pack_sizes=QUICK_PACK_SIZES)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def bench_facts(n: int) -> list[Fact]:
    """The first ``n`` ZsRE facts (MEND eval split)."""
    facts = load_facts("zsre", limit=n).facts
    if len(facts) < n:
        raise ValueError(f"the benchmark needs {n} facts but ZsRE gave {len(facts)}")
    return facts


def bench_config(steps: int, seed: int) -> TrialConfig:
    """Trial i of every variant: the default LoRA config with ``steps`` steps and seed i."""
    return TrialConfig(steps=steps, seed=seed)


# --------------------------------------------------------------------------- naive trial process


def naive_main(argv: Sequence[str]) -> None:
    """One trial in a fresh process: load the model, its base answers, the trial; print the trial as JSON."""
    parser = argparse.ArgumentParser(prog="python -m raysem.bench.training naive")
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fact", required=True, help="the fact as JSON (Fact.to_dict)")
    parser.add_argument("--config", required=True, help="the trial config as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    resident = ResidentModel(args.model, dtype=auto_dtype(args.device), device=args.device)
    fact = Fact.from_dict(json.loads(args.fact))
    cfg = TrialConfig.model_validate_json(args.config)
    result = run_trial(resident, [fact], [fact], resident.base_records([fact]), cfg)
    print(json.dumps({"fact_id": fact.id, "y_new": result.records[0]["y_new"], "aggregates": result.aggregates}))


# --------------------------------------------------------------------------- measurements


class Clock:
    """Wall time and CPU time (this process and its finished children, all threads) of a block."""

    wall_s = 0.0
    cpu_s = 0.0

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def __enter__(self) -> Clock:
        self._wall, self._cpu0 = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s, self.cpu_s = time.perf_counter() - self._wall, self._cpu() - self._cpu0


@dataclass(frozen=True)
class MatmulPeak:
    """Dense matmul throughput: best wall-clock run, and FLOPs per CPU-second over all runs (CPU only)."""

    gflops: float
    cpu_gflops: float | None


def matmul_peak(device: str | None = None, size: int = 2048, repeats: int = 10) -> MatmulPeak:
    """``size``³ matmuls, fp32 on CPU and bf16 on CUDA."""
    dev = torch.device(device or "cpu")
    a = torch.randn(size, size, device=dev, dtype=auto_dtype(device))
    b = torch.randn(size, size, device=dev, dtype=auto_dtype(device))
    a @ b
    synchronize(dev)
    best = math.inf
    with Clock() as clock:
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            synchronize(dev)
            best = min(best, time.perf_counter() - start)
    flops = 2 * size**3
    return MatmulPeak(flops / best / 1e9, flops * repeats / clock.cpu_s / 1e9 if dev.type == "cpu" else None)


@dataclass
class VariantRun:
    """Wall and CPU time of one variant over its trials, their useful FLOPs, and what the trials answered."""

    name: str
    """Its key in the summary: ``naive``, ``resident`` or ``packed:<K>`` (``variant_label`` names it for people)."""
    trials: int
    wall_s: float
    cpu_s: float
    flops: float
    y_new: dict[int, str]
    parts_s: dict[str, float] = field(default_factory=dict)
    """Wall seconds of the variant's parts, where it reports them (packed: load, base, train, evaluate)."""
    train_flops: float = math.nan
    """Useful FLOPs of the trials' training steps alone."""

    @property
    def trials_per_hour(self) -> float:
        return 3600 * self.trials / self.wall_s

    def share(self, peak: MatmulPeak) -> float:
        """Achieved FLOP/s over the wall-clock matmul peak."""
        return self.flops / self.wall_s / 1e9 / peak.gflops

    def cpu_share(self, peak: MatmulPeak) -> float | None:
        """FLOPs per CPU-second over the matmul's: the same ratio, blind to time lost to other processes."""
        return self.flops / self.cpu_s / 1e9 / peak.cpu_gflops if peak.cpu_gflops else None


def variant_label(key: str) -> str:
    """How a table names a variant of the summary (``packed:32`` -> ``packed K=32``)."""
    fixed = {"naive": "naive (process per trial)", "resident": "resident, unpacked"}
    return fixed.get(key) or f"packed K={key.removeprefix('packed:')}"


def run_naive(settings: BenchSettings, facts: Sequence[Fact], flops: Sequence[float]) -> VariantRun:
    n = settings.naive_trials
    y_new = {}
    with Clock() as clock:
        for i, fact in enumerate(facts[:n]):
            command = [sys.executable, "-m", "raysem.bench.training", "naive", "--model", settings.model]
            command += [
                "--fact",
                json.dumps(fact.to_dict()),
                "--config",
                bench_config(settings.steps, i).model_dump_json(),
            ]
            if settings.device:
                command += ["--device", settings.device]
            if settings.threads:
                command += ["--threads", str(settings.threads)]
            proc = subprocess.run(command, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise RuntimeError(f"naive trial on {fact.id} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
            y_new[i] = json.loads(proc.stdout.strip().splitlines()[-1])["y_new"]
    return VariantRun("naive", n, clock.wall_s, clock.cpu_s, sum(flops[:n]), y_new)


def run_resident(
    lm: LoadedModel, load: Clock, settings: BenchSettings, facts: Sequence[Fact], flops: Sequence[float]
) -> VariantRun:
    n = settings.resident_trials
    with Clock() as clock:
        resident = ResidentModel(lm)
        base = resident.base_records(facts[:n])
        y_new = {}
        for i, fact in enumerate(facts[:n]):
            y_new[i] = run_trial(resident, [fact], [fact], base, bench_config(settings.steps, i)).records[0]["y_new"]
    return VariantRun("resident", n, load.wall_s + clock.wall_s, load.cpu_s + clock.cpu_s, sum(flops[:n]), y_new)


def run_packed(
    lm: LoadedModel,
    load: Clock,
    settings: BenchSettings,
    facts: Sequence[Fact],
    flops: Sequence[float],
    train_flops: Sequence[float],
    k: int,
) -> VariantRun:
    with Clock() as clock:
        resident = ResidentModel(lm)
        cfgs = [bench_config(settings.steps, i) for i in range(k)]
        with Clock() as base_clock:
            base = resident.base_records(facts[:k])
        results = run_packed_trials(lm, facts[:k], cfgs, base, resident.embedder, micro_batch=settings.micro_batch)
    y_new = {i: r.records[0]["y_new"] for i, r in enumerate(results) if r.records}
    pack = results[0].aggregates
    parts = {
        "load": load.wall_s,
        "base": base_clock.wall_s,
        "train": pack["pack_train_s"],
        "evaluate": pack["pack_wall_s"] - pack["pack_train_s"],
    }
    return VariantRun(
        f"packed:{k}",
        k,
        load.wall_s + clock.wall_s,
        load.cpu_s + clock.cpu_s,
        sum(flops[:k]),
        y_new,
        parts,
        sum(train_flops[:k]),
    )


def run_bench(settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every variant in this process (naive ones in subprocesses); the JSON-ready summary."""
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _summary(settings, *_measure(settings, progress or (lambda message: None)))
    finally:
        torch.set_num_threads(threads)


def _measure(
    settings: BenchSettings, say: Callable[[str], None]
) -> tuple[str, MatmulPeak, Clock, list[float], list[VariantRun]]:
    n = max(settings.naive_trials, settings.resident_trials, *settings.pack_sizes)
    facts = bench_facts(n)
    say(f"matmul {settings.matmul_size}³ ...")
    peak = matmul_peak(settings.device, settings.matmul_size)
    with Clock() as load:
        lm = load_model(settings.model, dtype=auto_dtype(settings.device), device=settings.device)
    parts = [trial_flops(lm, f, bench_config(settings.steps, i)) for i, f in enumerate(facts)]
    flops = [sum(p.values()) for p in parts]
    say(f"naive: {settings.naive_trials} trials ...")
    runs = [run_naive(settings, facts, flops)]
    say(f"resident: {settings.resident_trials} trials ...")
    runs.append(run_resident(lm, load, settings, facts, flops))
    for k in settings.pack_sizes:
        say(f"packed: K={k} ...")
        runs.append(run_packed(lm, load, settings, facts, flops, [p["train"] for p in parts], k))
    return str(lm.device), peak, load, flops, runs


def _summary(
    settings: BenchSettings, device: str, peak: MatmulPeak, load: Clock, flops: list[float], runs: list[VariantRun]
) -> dict[str, Any]:
    naive, resident, packed = runs[0], runs[1], runs[2:]
    best = max(packed, key=lambda r: r.trials_per_hour)
    unpacked_answers = {**naive.y_new, **resident.y_new}
    pairs = [(i, r.y_new[i]) for r in packed for i in r.y_new if i in unpacked_answers]
    return {
        "model": settings.model,
        "device": device,
        "threads": torch.get_num_threads(),
        "steps": settings.steps,
        "trials": {r.name: r.trials for r in runs},
        "wall_s": {r.name: r.wall_s for r in runs},
        "cpu_s": {r.name: r.cpu_s for r in runs},
        "model_load_s": load.wall_s,
        "matmul_gflops": peak.gflops,
        "matmul_gflops_per_cpu_s": peak.cpu_gflops,
        "naive_trials_per_hour": naive.trials_per_hour,
        "resident_trials_per_hour": resident.trials_per_hour,
        "packed": {str(r.trials): r.trials_per_hour for r in packed},
        "naive_matmul_share": naive.share(peak),
        "resident_matmul_share": resident.share(peak),
        "packed_matmul_share": {str(r.trials): r.share(peak) for r in packed},
        "packed_parts_s": {str(r.trials): r.parts_s for r in packed},
        "packed_train_flop_share": {str(r.trials): r.train_flops / r.flops for r in packed},
        "packed_train_matmul_share": {
            str(r.trials): r.train_flops / r.parts_s["train"] / 1e9 / peak.gflops for r in packed
        },
        "cpu_matmul_share": {r.name: r.cpu_share(peak) for r in runs},
        "mean_trial_gflop": statistics.fmean(flops) / 1e9,
        "best_pack_size": best.trials,
        "default_pack_size": StudySpec.model_fields["pack_size"].default,
        "best_speedup": best.trials_per_hour / naive.trials_per_hour,
        "best_speedup_vs_resident": best.trials_per_hour / resident.trials_per_hour,
        "best_matmul_share": best.share(peak),
        "same_y_new_as_unpacked": (sum(unpacked_answers[i] == y for i, y in pairs) / len(pairs)) if pairs else math.nan,
    }


if __name__ == "__main__":
    if sys.argv[1:2] != ["naive"]:
        raise SystemExit(
            "usage: python -m raysem.bench.training naive --model M --fact JSON --config JSON [--device D]"
        )
    naive_main(sys.argv[2:])
