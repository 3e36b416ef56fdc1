"""The GPU check (``bash benchmarks/gpu_check.sh``): packed LoRA trials on one CUDA GPU, measured against goals.

On a machine with one CUDA GPU, in a few minutes, it measures and prints:

- the bf16 dense-matmul peak (8192³), the yardstick of every MFU below;
- naive / resident / packed single-fact LoRA trials per hour and MFU for K in {16, 64, 256}, on a
  random model of the embedded model's shape (SmolLM2-135M: its config and tokenizer, no weights),
  through :func:`raysem.bench.training.run_bench` (goal: packed ≥ 20× naive, ≥ 40% MFU at the best K);
- a packed LoRA training step on a random Llama-2-7B-shaped model in bf16, K in {4, 16}, with its
  MFU (goal ≥ 50%) and the host syncs one step makes (CUDA's sync debug mode);
- one DeepSpeed ZeRO-2 full fine-tuning step on the embedded shape, when deepspeed imports;
- the functions a study's unit calls, without Ray: ``ResidentModel`` in bf16 on the random 7B-shaped
  Llama, the base records of 64 facts, one 100-fact LoRA trial (``run_trial``) and a pack of 16
  single-fact trials (``run_packed_trials``), each with its seconds and peak memory beside
  ``raysem study plan``'s estimate;
- on the embedded shape, CUDA (bf16) against CPU (float32): the same greedy answers and target losses
  within ``BF16_LOSS_TOLERANCE``.

MFU is useful FLOPs (``raysem.bench.training.ModelShape``) per second over the measured matmul peak.
Goals are printed beside the measurements, never asserted. ``--dry-run`` runs every step on CPU
with tiny shapes in seconds; ``--prepare FOLDER`` (run where the embedded model and ZsRE are)
copies what the check needs into FOLDER: the model's config and tokenizer files and ZsRE's eval split.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from raysem.bench.training import BenchSettings, bench_facts, run_bench
from raysem.data.datasets import resolve_dataset
from raysem.data.facts import Fact
from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.device import auto_dtype, resolve_dtype, synchronize
from raysem.models.encoding import TargetBatch, encode_targets, target_logits
from raysem.models.loader import LoadedModel, embedded_model_dir, load_model
from raysem.models.tiny import TINY_SHAPE
from raysem.ports import free_port
from raysem.semantics.evaluate import base_records
from raysem.semantics.loss import per_example_loss
from raysem.training.config import TrialConfig
from raysem.training.flops import ModelShape
from raysem.training.packed import (
    DEFAULT_MICRO_BATCH,
    PackedLora,
    attach_packed_lora,
    run_packed_trials,
    train_packed_batch,
)
from raysem.training.trial import ResidentModel, run_trial

FOLDER = Path("benchmarks") / ".gpu_check"
"""Where ``benchmarks/gpu_check.sh`` keeps the prepared files, relative to the checkout it runs from."""
"""Where ``gpu_check.sh --prepare`` puts the model files, ZsRE and the wheels (git-ignored)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")

LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)
TINY = {**TINY_SHAPE, "head_dim": 16}

GOAL_SPEEDUP, GOAL_MFU_EMBEDDED, GOAL_MFU_7B = 20.0, 0.40, 0.50
BF16_LOSS_TOLERANCE = 0.02
"""Relative difference allowed between a target loss in bf16 on CUDA and in float32 on the CPU: bf16 keeps
8 significant bits (one rounding ≤ 0.4%), a loss is a few dozen layers of roundings deep."""
BUDGET_S = 8 * 60


@dataclass(frozen=True)
class CheckSettings:
    """What one check measures; ``full`` on a GPU, ``dry`` on CPU."""

    device: str
    bench: BenchSettings
    """The embedded-shape benchmark (its ``model`` is replaced by the random model's folder)."""
    big: dict[str, int]
    """The 7B-shaped model's config (tiny in a dry run)."""
    big_pack_sizes: tuple[int, ...]
    big_steps: int
    big_tokens: int
    big_targets: int
    deepspeed_facts: int
    deepspeed_steps: int
    study_base_facts: int = 64
    study_k: int = 100
    study_pack: int = 16
    study_steps: int = 3
    dry_run: bool = False

    @classmethod
    def full(cls) -> CheckSettings:
        bench = BenchSettings(
            device="cuda",
            naive_trials=2,
            resident_trials=8,
            pack_sizes=(16, 64, 256),
            matmul_size=8192,
            micro_batch=None,
        )
        return cls(
            "cuda",
            bench,
            LLAMA2_7B,
            (4, 16),
            big_steps=3,
            big_tokens=128,
            big_targets=8,
            deepspeed_facts=16,
            deepspeed_steps=3,
        )

    @classmethod
    def dry(cls) -> CheckSettings:
        bench = BenchSettings(
            device=None, steps=2, naive_trials=1, resident_trials=1, pack_sizes=(2,), matmul_size=256, micro_batch=None
        )
        return cls(
            "cpu",
            bench,
            {**TINY, "vocab_size": 32000},
            (2,),
            big_steps=2,
            big_tokens=16,
            big_targets=4,
            deepspeed_facts=2,
            deepspeed_steps=1,
            study_base_facts=4,
            study_k=4,
            study_pack=2,
            study_steps=1,
            dry_run=True,
        )


# --------------------------------------------------------------------------- preparation


def prepare(folder: Path) -> None:
    """Copy the embedded model's config and tokenizer files (not its weights) and ZsRE's eval split into ``folder``."""
    source = embedded_model_dir(DEFAULT_MODEL)
    if not (source / "config.json").exists():
        raise SystemExit(f"{source} holds no model: run `raysem model pull` first")
    (folder / "model").mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    for key in ("quantization_config", "_model_name_or_path"):  # left by the GGUF conversion
        config.pop(key, None)
    (folder / "model" / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, folder / "model" / name)
    tokenizer = json.loads((folder / "model" / "tokenizer_config.json").read_text())
    tokenizer["tokenizer_class"] = (
        "PreTrainedTokenizerFast"  # transformers 5 maps it to its TokenizersBackend; 4.x knows only this
    )
    (folder / "model" / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2))
    zsre = resolve_dataset("zsre")
    (folder / "data" / "zsre").mkdir(parents=True, exist_ok=True)
    shutil.copy2(zsre, folder / "data" / "zsre" / zsre.name)


def model_source(folder: Path) -> Path:
    """The prepared model files, or the embedded model's own folder (on the machine that pulled it)."""
    prepared = folder / "model"
    if (prepared / "config.json").exists():
        return prepared
    if (embedded_model_dir(DEFAULT_MODEL) / "config.json").exists():
        return embedded_model_dir(DEFAULT_MODEL)
    raise SystemExit(
        f"no model config under {prepared}: run `bash benchmarks/gpu_check.sh --prepare` where the embedded model is"
    )


def random_model(source: Path, out: Path, device: str, overrides: dict[str, int] | None = None) -> str:
    """A randomly initialised model of ``source``'s config (with ``overrides``) and its tokenizer, saved in ``out``."""
    config = AutoConfig.from_pretrained(source)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=auto_dtype(device))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    del model
    return str(out)


# --------------------------------------------------------------------------- measurements


def synthetic_batch(k: int, tokens: int, targets: int, vocab: int, device: str) -> TargetBatch:
    """``k`` random sequences of ``tokens`` tokens whose last ``targets`` are the targets."""
    ids = torch.randint(3, vocab, (k, tokens), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(tokens - targets - 1, tokens - 1).expand(k, -1).clone()
    return TargetBatch(ids, torch.ones_like(ids), positions, ids[:, tokens - targets :].clone()).to(device)


def syncs_per_step(run: Callable[[int], object], device: str) -> int | None:
    """Host syncs one more step adds (CUDA's sync debug mode counts them); None off CUDA."""
    if not device.startswith("cuda"):
        return None
    counts = []
    for steps in (1, 2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run(steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return counts[1] - counts[0]


def _train_steps(model: torch.nn.Module, packed: PackedLora, batch: TargetBatch, cfg: TrialConfig, steps: int) -> None:
    """``steps`` packed training steps of the whole pack in one micro-batch, under bf16 autocast."""
    k = packed.n_trials
    weights = torch.ones(k, device=batch.input_ids.device)
    train_packed_batch(
        model,
        packed,
        batch,
        weights,
        cfg.model_copy(update={"steps": steps}),
        [f"row {i}" for i in range(k)],
        None,
        autocast=True,
    )


def big_packed_steps(settings: CheckSettings, peak_gflops: float, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """A packed LoRA training step on a random 7B-shaped Llama in bf16 (see :func:`_train_steps`), for each K."""
    device = settings.device
    say(
        f"7B-shaped Llama ({settings.big['num_hidden_layers']} layers, hidden {settings.big['hidden_size']}): random init on {device} ..."
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**settings.big), dtype=auto_dtype(device))
    cfg = TrialConfig(steps=settings.big_steps)
    shape = ModelShape.of_model(model, cfg)
    rows = []
    for k in settings.big_pack_sizes:
        say(f"7B-shaped packed step, K={k} ...")
        packed = attach_packed_lora(model, list(range(k)), cfg.rank, cfg.alpha, cfg.targets(model))
        try:
            batch = synthetic_batch(k, settings.big_tokens, settings.big_targets, settings.big["vocab_size"], device)
            train = functools.partial(_train_steps, model, packed, batch, cfg)
            train(1)  # warm-up: kernels, allocator
            synchronize(torch.device(device))
            start = time.perf_counter()
            train(settings.big_steps)
            synchronize(torch.device(device))
            step_s = (time.perf_counter() - start) / settings.big_steps
            flops = k * shape.train_step(settings.big_tokens, settings.big_targets)
            rows.append(
                {
                    "k": k,
                    "tokens_per_row": settings.big_tokens,
                    "step_s": step_s,
                    "tokens_per_s": k * settings.big_tokens / step_s,
                    "tflops": flops / step_s / 1e12,
                    "mfu": flops / step_s / 1e9 / peak_gflops,
                    "syncs_per_step": syncs_per_step(train, device),
                    "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
                }
            )
        finally:
            packed.detach()
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


@contextmanager
def _single_process_group(backend: str) -> Iterator[None]:
    import torch.distributed as dist

    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for name, value in before.items():  # leave the environment as it was
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def deepspeed_step(
    settings: CheckSettings, model_dir: str, facts: list[Fact], peak_gflops: float, say: Callable[[str], None]
) -> dict[str, Any]:
    """One DeepSpeed ZeRO-2 full fine-tuning step (one process, ``deepspeed_facts`` facts) on the embedded shape."""
    if not settings.dry_run and not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU"}
    if settings.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        return {"skipped": f"deepspeed is not importable ({exc})"}
    from raysem.training.full_finetune import deepspeed_config, shard_loss
    from raysem.training.optim import build_optimizer

    cuda = settings.device.startswith("cuda")
    if not cuda:
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False  # no JIT build of a CPU op ZeRO does not use
    say("DeepSpeed ZeRO-2 full fine-tuning step ...")
    cfg = TrialConfig(method="full", zero_stage=2, lr=3e-5)
    facts = facts[: settings.deepspeed_facts]
    with _single_process_group("nccl" if cuda else "gloo"):
        lm = load_model(model_dir, dtype=auto_dtype(settings.device), device=settings.device)
        shape = dataclasses.replace(ModelShape.of(lm, cfg), lora=0)
        sizes = [tuple(map(len, lm.prompt_and_answer_ids(f.prompt, f.target))) for f in facts]
        flops = sum(shape.train_step(p + a, a, full=True) for p, a in sizes)
        optimizer = build_optimizer(lm.model.parameters(), cfg)
        config = deepspeed_config(cfg, 1, len(facts), torch.bfloat16 if cuda else torch.float32)
        engine, *_ = deepspeed.initialize(model=lm.model, optimizer=optimizer, config=config, dist_init_required=False)
        base = {f.id: {"dist_old": 0.0} for f in facts}

        def step() -> None:
            engine.backward(shard_loss(engine.module, lm, facts, base, cfg, 0, 1))
            engine.step()

        step()  # warm-up
        synchronize(torch.device(settings.device))
        start = time.perf_counter()
        for _ in range(settings.deepspeed_steps):
            step()
        synchronize(torch.device(settings.device))
        step_s = (time.perf_counter() - start) / settings.deepspeed_steps
        engine.destroy()
    return {
        "facts": len(facts),
        "step_s": step_s,
        "tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / 1e9 / peak_gflops,
    }


def _resident_on(settings: CheckSettings, source: Path) -> ResidentModel:
    """A random 7B-shaped Llama (tiny in a dry run) over ``source``'s tokenizer, as a unit's resident model:
    on the check's device, in the precision a unit takes there (bf16 on CUDA)."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    config = LlamaConfig(**{**settings.big, "vocab_size": len(tokenizer)})
    with torch.device(settings.device):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype("auto", settings.device)).eval()
    chat = tokenizer.chat_template is not None
    return ResidentModel(LoadedModel(model=model, tokenizer=tokenizer, name="llama-7b-shaped", chat=chat))


def _measured(device: str, run: Callable[[], object]) -> tuple[object, float, float | None]:
    """``run()``'s result, seconds and peak allocated GiB (CUDA only)."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = run()
    synchronize(torch.device(device))
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return out, time.perf_counter() - start, peak


def study_code(settings: CheckSettings, source: Path, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """The functions a unit calls, as it calls them (no Ray): each step's seconds and peak memory, beside
    the plan's estimate of that unit (``raysem.service.estimate.unit_memory``, cuda)."""
    from raysem.service.estimate import GIB, tokens_of, unit_memory

    say(f"study code: ResidentModel on {settings.device} ({settings.big['num_hidden_layers']} layers) ...")
    resident, load_s, load_peak = _measured(settings.device, lambda: _resident_on(settings, source))
    assert isinstance(resident, ResidentModel)
    lm = resident.lm
    dtype = next(lm.model.parameters()).dtype
    facts = bench_facts(max(settings.study_base_facts, settings.study_k, settings.study_pack))
    tokens = tokens_of(lm, facts)
    cfg = TrialConfig(steps=settings.study_steps)

    def planned(rows: int, trials: int) -> float:
        memory = unit_memory(lm.model, cfg, rows, trials, tokens, dtype, cuda=True)
        return (memory.total - memory.runtime) / GIB  # tensors only, as max_memory_allocated counts

    rows: list[dict[str, Any]] = [
        {"step": "ResidentModel", "s": load_s, "peak_gib": load_peak, "planned_gib": None},
    ]
    say(f"study code: base records of {settings.study_base_facts} facts ...")
    base, seconds, peak = _measured(
        settings.device, lambda: resident.base_records(facts[: max(settings.study_base_facts, settings.study_k)])
    )
    assert isinstance(base, dict)
    rows.append(
        {
            "step": f"base records, {settings.study_base_facts} facts",
            "s": seconds,
            "peak_gib": peak,
            "planned_gib": None,
        }
    )
    k = settings.study_k
    say(f"study code: one {k}-fact LoRA trial (run_trial) ...")
    _, seconds, peak = _measured(settings.device, lambda: run_trial(resident, facts[:k], facts[:k], base, cfg))
    rows.append(
        {
            "step": f"run_trial, {k} facts",
            "s": seconds,
            "peak_gib": peak,
            "planned_gib": planned(min(k, cfg.batch_size), 1),
        }
    )
    pack = settings.study_pack
    say(f"study code: a pack of {pack} single-fact trials (run_packed_trials) ...")
    chosen = facts[:pack]
    _, seconds, peak = _measured(
        settings.device,
        lambda: run_packed_trials(lm, chosen, [cfg] * pack, base, resident.embedder),
    )
    rows.append(
        {
            "step": f"run_packed_trials, {pack} trials",
            "s": seconds,
            "peak_gib": peak,
            "planned_gib": planned(min(pack, DEFAULT_MICRO_BATCH), pack),
        }
    )
    return rows


def cuda_against_cpu(settings: CheckSettings, model_dir: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The embedded shape's greedy answers and target losses on the check's device in its precision against
    float32 on the CPU, over 16 facts."""
    say(f"{settings.device} against cpu: greedy answers and target losses ...")
    facts = bench_facts(16)
    runs = {}
    for device in (settings.device, "cpu"):
        lm = load_model(model_dir, dtype=resolve_dtype("auto", device), device=device)
        records = base_records(lm, facts)
        batch = encode_targets(lm, [f.prompt for f in facts], [f.target for f in facts])
        with torch.no_grad():
            losses = per_example_loss(target_logits(lm.model, batch.to(lm.device)).float(), batch.labels.to(lm.device))
        runs[device] = ([r["y_old"] for r in records], losses.cpu().double())
        del lm
    (answers, losses), (cpu_answers, cpu_losses) = runs[settings.device], runs["cpu"]
    relative = ((losses - cpu_losses).abs() / cpu_losses.abs()).max().item()
    return {
        "facts": len(facts),
        "same_answers": sum(a == b for a, b in zip(answers, cpu_answers)) / len(facts),
        "max_loss_relative_diff": relative,
        "tolerance": BF16_LOSS_TOLERANCE,
        "within": relative <= BF16_LOSS_TOLERANCE,
    }


def run_check(settings: CheckSettings, source: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement of the check; the JSON-ready summary."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raysem-gpu-check-") as tmp:
        say(f"random model of the embedded model's shape ({source}) on {settings.device} ...")
        overrides = TINY if settings.dry_run else None
        model_dir = random_model(source, Path(tmp) / "model", settings.device, overrides)
        bench = dataclasses.replace(settings.bench, model=model_dir)
        embedded = run_bench(bench, progress=say)
        peak = embedded["matmul_gflops"]
        big = big_packed_steps(settings, peak, say)
        ds = deepspeed_step(settings, model_dir, bench_facts(settings.deepspeed_facts), peak, say)
        agreement = cuda_against_cpu(settings, model_dir, say)
        study = study_code(settings, source, say)
    wall = time.perf_counter() - started
    best_big = max(r["mfu"] for r in big)
    return {
        "device": torch.cuda.get_device_name() if settings.device.startswith("cuda") else "cpu",
        "dry_run": settings.dry_run,
        "matmul_size": settings.bench.matmul_size,
        "matmul_tflops": peak / 1e3,
        "embedded": embedded,
        "llama7b": big,
        "deepspeed": ds,
        "study": study,
        "agreement": agreement,
        "goals": {
            "packed_speedup": {
                "goal": GOAL_SPEEDUP,
                "measured": embedded["best_speedup"],
                "met": embedded["best_speedup"] >= GOAL_SPEEDUP,
            },
            "packed_mfu": {
                "goal": GOAL_MFU_EMBEDDED,
                "measured": embedded["best_matmul_share"],
                "met": embedded["best_matmul_share"] >= GOAL_MFU_EMBEDDED,
            },
            "llama7b_mfu": {"goal": GOAL_MFU_7B, "measured": best_big, "met": best_big >= GOAL_MFU_7B},
        },
        "wall_s": wall,
        "within_budget": wall <= BUDGET_S,
    }


# --------------------------------------------------------------------------- output


def render(summary: dict[str, Any]) -> Table:
    """The summary as one table: each measurement, its MFU, and the goal it answers to."""
    e = summary["embedded"]
    title = f"GPU check on {summary['device']}; MFU = useful FLOP/s over the measured matmul peak"
    if summary["dry_run"]:
        title += " (dry run: tiny shapes on CPU, the numbers mean nothing)"
    table = Table(title=title)
    for column in ("measurement", "result", "MFU", "goal", "met"):
        table.add_column(column, justify="left" if column in ("measurement", "goal") else "right")

    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    dtype = "fp32" if summary["dry_run"] else "bf16"
    table.add_row(
        f"dense matmul peak, {dtype} {summary['matmul_size']}³", f"{summary['matmul_tflops']:,.1f} TFLOP/s", "", "", ""
    )
    naive = e["naive_trials_per_hour"]
    table.add_row(
        f"naive, {e['trials']['naive']} trials of {e['steps']} steps",
        f"{naive:,.0f} trials/h",
        f"{e['naive_matmul_share']:.1%}",
        "",
        "",
    )
    table.add_row(
        f"resident, {e['trials']['resident']} trials",
        f"{e['resident_trials_per_hour']:,.0f} trials/h",
        f"{e['resident_matmul_share']:.1%}",
        "",
        "",
    )
    for k, rate in e["packed"].items():
        best = int(k) == e["best_pack_size"]
        goal = f"≥ {GOAL_SPEEDUP:.0f}× naive, ≥ {GOAL_MFU_EMBEDDED:.0%} MFU (best K)" if best else ""
        ok = met(summary["goals"]["packed_speedup"]["met"] and summary["goals"]["packed_mfu"]["met"]) if best else ""
        table.add_row(
            f"packed K={k}",
            f"{rate:,.0f} trials/h, {rate / naive:.1f}× naive",
            f"{e['packed_matmul_share'][k]:.1%}",
            goal,
            ok,
        )
    for row in summary["llama7b"]:
        syncs = "" if row["syncs_per_step"] is None else f", {row['syncs_per_step']} syncs/step"
        table.add_row(
            f"7B-shaped packed step K={row['k']} ({row['tokens_per_row']} tokens/row)",
            f"{row['step_s'] * 1e3:,.0f} ms{syncs}",
            f"{row['mfu']:.1%}",
            f"≥ {GOAL_MFU_7B:.0%} MFU",
            met(row["mfu"] >= GOAL_MFU_7B),
        )
    ds = summary["deepspeed"]
    if "skipped" in ds:
        table.add_row("DeepSpeed ZeRO-2 full FT step", f"skipped: {ds['skipped']}", "", "", "")
    else:
        table.add_row(
            f"DeepSpeed ZeRO-2 full FT step ({ds['facts']} facts)",
            f"{ds['step_s'] * 1e3:,.0f} ms",
            f"{ds['mfu']:.1%}",
            "",
            "",
        )
    for row in summary["study"]:
        memory = "" if row["peak_gib"] is None else f", peak {row['peak_gib']:.2f} GiB"
        plan = "" if row["planned_gib"] is None else f"plan: tensors {row['planned_gib']:.2f} GiB"
        table.add_row(f"study code: {row['step']}", f"{row['s']:.1f} s{memory}", "", plan, "")
    agree = summary["agreement"]
    table.add_row(
        f"{summary['device']} against cpu, {agree['facts']} facts",
        f"same answers {agree['same_answers']:.0%}, losses within {agree['max_loss_relative_diff']:.2%}",
        "",
        f"losses ≤ {agree['tolerance']:.0%} apart",
        met(agree["within"]),
    )
    budget = f"≤ {BUDGET_S // 60} min"
    table.add_row("whole check", f"{summary['wall_s']:.0f} s", "", budget, met(summary["within_budget"]))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m raysem.bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU with tiny shapes, in seconds")
    parser.add_argument("--folder", type=Path, default=FOLDER, help=f"the prepared files (default {FOLDER})")
    parser.add_argument(
        "--prepare", action="store_true", help="copy the model's config and tokenizer and ZsRE into --folder, then stop"
    )
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.folder)
        return
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --dry-run to exercise the check on CPU")
    if (args.folder / "data" / "zsre").is_dir():
        os.environ["RAYSEM_DATA"] = str(args.folder / "data")
    source = model_source(args.folder)
    settings = CheckSettings.dry() if args.dry_run else CheckSettings.full()
    err = Console(stderr=True)
    summary = run_check(settings, source, lambda message: err.print(f"[dim]{message}[/dim]"))
    Console(width=160).print(render(summary))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
