"""A study's cost before it launches (``raysem study plan``): the memory of one unit on its device, how many
units share a GPU, the study's FLOPs, and the GPU-hours and wall time they take.

Everything comes from the model's config (a meta-device model: shapes, no weights), the spec and a sample
of the dataset's facts tokenized as the study will prompt them. Memory per unit, in the unit's precision:

- weights: every parameter in the compute dtype (float32 on CPU; ``precision`` on CUDA), and the answer
  embedder's copy of the input embedding table;
- trainable state: the trainable weights in float32, their gradients and the optimizer's state (AdamW: two
  float32 moments; SGD: none), for every trial of a pack;
- activations: what the backward pass keeps, per layer and token, in the compute dtype: with frozen base
  weights ``5·h + 2·kv + 3·i`` values (the two norms' inputs and output, q, k, v and the attention output,
  the MLP's gate, up and activation; a frozen linear keeps no input), with full fine-tuning ``8·h + 2·kv + 4·i``
  (every linear's input too), plus ``heads·tokens`` attention weights; plus the logits, computed at the
  target positions only, with their float32 copy and gradient. Rows are a micro-batch (``DEFAULT_MICRO_BATCH``);
- evaluation instead of training at the peak when its KV cache (``eval_batch_size`` rows) is larger;
- a runtime allowance: on CUDA the context, kernels and the allocator's slack; on the CPU the libraries a
  unit loads with its model (measured with a 2-layer model, ``raysem bench plan``).

Full fine-tuning (DeepSpeed) is planned per DeepSpeed worker: weights, float32 master weights, gradients and
AdamW moments, divided over the workers as its ZeRO stage shards them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from raysem.data.facts import Fact
from raysem.errors import SpecError
from raysem.models.device import planned_dtype
from raysem.models.loader import LoadedModel
from raysem.service.planning import count_trials
from raysem.service.spec import StudySpec
from raysem.training.config import TrialConfig
from raysem.training.packed import DEFAULT_MICRO_BATCH

LOAD_GBPS = 1.0
"""Rate at which a worker loads the model's weights from its node's disk onto its device, GB/s."""
TABLE_BATCH = 32
"""Facts per batch of the base-answer job (and per decoding batch)."""

GIB = 1024**3
CUDA_RUNTIME_GIB = 1.5
"""What a CUDA process holds besides tensors: its context, kernels and the caching allocator's slack."""
CPU_RUNTIME_GIB = 0.25
"""What a CPU unit's process grows by besides tensors when it loads a model and trains (libraries, tokenizer)."""
EVAL_ROWS = 64
"""Rows per evaluation batch (``run_packed_trials``' ``eval_batch_size``)."""
PLAN_FACTS = 64
"""Facts of the dataset tokenized for the plan's token counts."""


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_gb: float
    peak_tflops: float
    """Dense 16-bit tensor-core peak (datasheet)."""
    memory_gbps: float
    """Memory bandwidth (datasheet), GB/s: a pass over the weights takes at least their bytes over it."""


GPUS: dict[str, GpuType] = {
    "a100-40gb": GpuType("A100-SXM4-40GB", 40, 312, 1555),
    "a100-80gb": GpuType("A100-SXM4-80GB", 80, 312, 2039),
    "h100-80gb": GpuType("H100-SXM5-80GB", 80, 989, 3350),
    "a10g-24gb": GpuType("A10G (AWS g5)", 24, 70, 600),
    "rtx3090-24gb": GpuType("RTX 3090", 24, 71, 936),
}
"""GPUs a plan can be made for (``--gpu``)."""
INSTANCE_GPUS: dict[str, str] = {"g5.xlarge": "a10g-24gb", "p4d.24xlarge": "a100-40gb", "p4de.24xlarge": "a100-80gb"}
"""cluster.yaml instance types and their GPUs."""


class PlanError(SpecError):
    """A spec whose unit cannot fit the GPU share it reserves."""


@dataclass(frozen=True)
class Tokens:
    """Mean token counts of a fact as the study prompts it, over a sample of the dataset."""

    prompt: float
    target: float
    locality: float
    """Locality prompts per fact (the base model answers them too)."""
    probes: float
    """Evaluation prompts per fact besides its own (rephrasings, locality, portability)."""
    facts: int


@dataclass
class UnitMemory:
    """Bytes one unit (or one DeepSpeed worker) holds at its peak, by part."""

    weights: float
    trainable: float
    activations: float
    runtime: float
    rows: int
    tokens: int

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations + self.runtime

    def gib(self) -> dict[str, float]:
        parts = {"weights": self.weights, "trainable": self.trainable, "activations": self.activations}
        return {**{k: round(v / GIB, 3) for k, v in parts.items()}, "runtime": round(self.runtime / GIB, 2)} | {
            "total": round(self.total / GIB, 3)
        }


@dataclass
class StudyPlan:
    """What ``raysem study plan`` prints."""

    name: str
    model: str
    params_b: float
    dtype: str
    device: str
    trials: int
    units: int
    packs: int
    pack_size: int
    tokens: Tokens
    unit: UnitMemory
    """The peak of what holds the model: a Tune unit, or for a full fine-tuning study a DeepSpeed worker."""
    holder: str
    """"unit" or "DeepSpeed worker": what ``unit`` is."""
    full_ft_worker: UnitMemory | None
    gpu: GpuType | None
    gpu_share: float
    units_per_gpu: int | None
    flops: float
    mfu: float
    gpus: int
    gpu_hours: float | None
    wall_hours: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["unit"] = self.unit.gib()
        out["full_ft_worker"] = self.full_ft_worker.gib() if self.full_ft_worker else None
        return out


def meta_model(model: str) -> nn.Module:
    """The model built on the meta device from its config alone: every shape, no weights, no memory."""
    from transformers import AutoModelForCausalLM

    from raysem.models.loader import shape_config

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(shape_config(model))


def fact_tokens(spec: StudySpec, notes: list[str]) -> Tokens:
    """Token counts of the first ``PLAN_FACTS`` facts under the spec's prompting, with the model's tokenizer
    when it is on this machine, else the embedded model's (a stand-in, said in ``notes``)."""
    from transformers import AutoTokenizer

    from raysem.data.datasets import load_facts
    from raysem.models.loader import local_model_path, pull_model

    local = local_model_path(spec.model)
    if local is None:
        notes.append(f"tokens counted with the embedded model's tokenizer: {spec.model} is not on this machine")
    tokenizer = AutoTokenizer.from_pretrained(local or pull_model())
    lm = LoadedModel(model=None, tokenizer=tokenizer, name=spec.model, chat=tokenizer.chat_template is not None)
    lm.prompting = spec.prompting
    return tokens_of(lm, load_facts(spec.dataset, limit=min(spec.data_limit or PLAN_FACTS, PLAN_FACTS)).facts)


def tokens_of(lm: LoadedModel, facts: Sequence[Fact]) -> Tokens:
    """Mean token counts of ``facts`` as ``lm`` prompts them (its tokenizer and prompting; no weights needed)."""
    prompts = [len(lm.tokenizer(lm.format_prompt(f.prompt), add_special_tokens=False).input_ids) for f in facts]
    targets = [lm.answer_budget(f.prompt, f.target) for f in facts]
    locality = [len(f.locality) for f in facts]
    probes = [len(f.rephrasings) + len(f.locality) + len(f.portability) for f in facts]
    n = len(facts)
    return Tokens(sum(prompts) / n, sum(targets) / n, sum(locality) / n, sum(probes) / n, n)


def trainable_params(model: nn.Module, cfg: TrialConfig) -> int:
    """Parameters one trial trains (LoRA / AdaLoRA: ``rank·(in + out)`` per target linear; adapters: two
    bottleneck projections with biases, twice per layer; IA³: a vector per peft target, over a feed-forward
    target's inputs and another's outputs; full: all)."""
    from raysem.models.architectures import architecture_of, peft_targets
    from raysem.training.packed import is_target_module

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    config = model.config
    if cfg.method in ("lora", "adalora"):
        targets = cfg.targets(model)
        return sum(cfg.rank * (m.in_features + m.out_features) for n, m in linears if is_target_module(n, targets))
    if cfg.method == "adapter":
        return (
            config.num_hidden_layers
            * 2
            * (2 * config.hidden_size * cfg.adapter_size + cfg.adapter_size + config.hidden_size)
        )
    if cfg.method == "ia3":
        family = architecture_of(model).family
        targets, feedforward = peft_targets(family, "ia3"), peft_targets(family, "ia3_feedforward")
        return sum(
            m.in_features if is_target_module(n, feedforward) else m.out_features
            for n, m in linears
            if is_target_module(n, targets)
        )
    return sum(p.numel() for p in model.parameters())


def _widths(model: nn.Module) -> tuple[int, int, int, int]:
    """(hidden, key/value width, MLP width, heads) from a model's config."""
    config = model.config
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * (hidden // heads)
    return hidden, kv, getattr(config, "intermediate_size", None) or 4 * hidden, heads


def activation_values(model: nn.Module, rows: int, tokens: int, full: bool = False) -> float:
    """Values the backward pass keeps for ``rows`` sequences of ``tokens`` (see the module's docstring),
    without the logits; ``full``: every weight trains, so every linear keeps its input."""
    hidden, kv, inner, heads = _widths(model)
    per_token = (8 * hidden + 4 * inner if full else 5 * hidden + 3 * inner) + 2 * kv + heads * tokens
    return rows * tokens * model.config.num_hidden_layers * per_token


def kv_cache_values(model: nn.Module, rows: int, tokens: int) -> float:
    """Values of the keys and values a generation of ``rows`` sequences of ``tokens`` caches."""
    return 2 * rows * tokens * model.config.num_hidden_layers * _widths(model)[1]


def unit_memory(
    model: nn.Module, cfg: TrialConfig, rows: int, trials: int, tokens: Tokens, dtype: torch.dtype, cuda: bool
) -> UnitMemory:
    """One unit's peak: ``trials`` adapters trained at once, ``rows`` sequences of a fact's tokens at a time."""
    size = torch.finfo(dtype).bits // 8
    params = sum(p.numel() for p in model.parameters()) + model.get_input_embeddings().weight.numel()
    trainable = trainable_params(model, cfg) * trials
    state = (4 + 4 + (8 if cfg.optimizer == "adamw" else 0)) * trainable  # float32 weights, gradients, moments
    vocab = model.get_output_embeddings().out_features
    sequence = math.ceil(tokens.prompt + tokens.target)
    logits = rows * math.ceil(tokens.target) * vocab * (size + 4 + 4)  # the logits, a float32 copy, its gradient
    train = activation_values(model, rows, sequence) * size + logits
    evaluate = kv_cache_values(model, EVAL_ROWS, sequence) * size + EVAL_ROWS * vocab * 4
    runtime = (CUDA_RUNTIME_GIB if cuda else CPU_RUNTIME_GIB) * GIB
    return UnitMemory(params * size, state, max(train, evaluate), runtime, rows, sequence)


def deepspeed_worker_memory(
    model: nn.Module, cfg: TrialConfig, tokens: Tokens, dtype: torch.dtype, cuda: bool
) -> UnitMemory:
    """One DeepSpeed worker of a full fine-tuning trial: 16-bit weights and gradients, float32 master weights
    and AdamW moments (float32 throughout on CPU), sharded over ``num_workers`` as the ZeRO stage says."""
    size = torch.finfo(dtype).bits // 8
    params = sum(p.numel() for p in model.parameters())
    workers = cfg.num_workers
    optimizer = params * (12 if size < 4 else 8)  # master weights (when 16-bit) and two moments
    weights = params * size / (workers if cfg.zero_stage >= 3 else 1)
    gradients = params * size / (workers if cfg.zero_stage >= 2 else 1)
    optimizer /= workers if cfg.zero_stage >= 1 else 1
    rows = max(1, math.ceil(cfg.batch_size / workers))
    vocab = model.get_output_embeddings().out_features
    sequence = math.ceil(tokens.prompt + tokens.target)
    logits = rows * math.ceil(tokens.target) * vocab * (size + 8)
    activations = activation_values(model, rows, sequence, full=True) * size + logits
    runtime = (CUDA_RUNTIME_GIB if cuda else CPU_RUNTIME_GIB) * GIB
    return UnitMemory(weights, gradients + optimizer, activations, runtime, rows, sequence)


@dataclass(frozen=True)
class Work:
    """One kind of unit in the study: its trial config, set size, trials per unit and how many such units."""

    cfg: TrialConfig
    k: int
    trials: int
    units: int
    packed: bool


def study_work(spec: StudySpec) -> list[Work]:
    """The study's units by kind (a grid's points; a search's trials at the spec's settings and its confirmation)."""
    from raysem.service.planning import expand_units

    if spec.search.algorithm == "grid":
        kinds: dict[str, Work] = {}
        for unit in expand_units(spec):
            point = unit["point"]
            cfg, k = spec.point_config(point), int(point.get("k", spec.sampling.k))
            key = f"{cfg.model_dump_json()}|{k}|{len(unit['samplings'])}"
            found = kinds.get(key)
            units = found.units + 1 if found else 1
            kinds[key] = Work(cfg, k, len(unit["samplings"]), units, spec.packs(point))
        return list(kinds.values())
    k, cfg = spec.sampling.k, spec.trial_config()
    packed = spec.packs({})
    n = spec.sampling.n_for(k)
    per_unit = min(n, spec.pack_size) if packed else 1
    out = [Work(cfg, k, per_unit, spec.search.num_samples * math.ceil(n / per_unit), packed)]
    if spec.search.confirm:
        m = spec.search.confirm.n_samplings
        per = min(m, spec.pack_size) if packed else 1
        out.append(Work(cfg, k, per, 2 * math.ceil(m / per), packed))
    return out


def trial_flops(shape: Any, work: Work, tokens: Tokens) -> float:
    """One trial's FLOPs (``ModelShape``): ``steps`` training steps over its batch, then its evaluation (the
    fact's answer, its loss and every probe, decoded for the target's budget)."""
    prompt, target = round(tokens.prompt), max(1, round(tokens.target))
    sequence = prompt + target
    batch = 1 if work.k == 1 else min(work.k, work.cfg.batch_size)
    train = work.cfg.steps * batch * shape.train_step(sequence, target, full=work.cfg.method == "full")
    evaluate = work.k * ((1 + tokens.probes) * shape.generate(prompt, target) + shape.forward(sequence, logits=target))
    return train + evaluate


def weight_passes(work: Work, tokens: Tokens) -> float:
    """Passes over the base weights one unit of ``work`` makes: three per training micro-batch (forward,
    backward), and per evaluation batch of ``EVAL_ROWS`` rows a prefill, one per decoded token and the loss's
    forward. Small batches of a 7B model are bound by these reads, not by their FLOPs."""
    micro = math.ceil(work.trials / DEFAULT_MICRO_BATCH) if work.packed else 1
    rows = work.trials * (1 if work.packed else work.k) * (1 + tokens.probes)
    return work.cfg.steps * micro * 3 + math.ceil(rows / EVAL_ROWS) * (max(1, round(tokens.target)) + 2)


def base_flops(shape: Any, facts: int, tokens: Tokens) -> float:
    """The base records of ``facts`` facts: the base model's greedy answer to each prompt and locality prompt."""
    return (
        facts * (1 + tokens.locality) * shape.generate(round(tokens.prompt), max(1, round(tokens.target)), lora=False)
    )


def plan_study(
    spec: StudySpec, gpu: str | None = None, gpus: int | None = None, mfu: float = 0.3, cluster: dict | None = None
) -> StudyPlan:
    """The spec's plan on ``gpus`` GPUs of type ``gpu`` (a ``GPUS`` key), or on the ``cluster``'s (a
    cluster.yaml mapping) node types that can host the unit. Raises ``PlanError`` when a unit (or a DeepSpeed
    worker) needs more memory than its GPU share offers, naming the numbers."""
    from raysem.training.flops import ModelShape

    model = meta_model(spec.model)
    cuda = spec.resources.gpu > 0
    dtype = planned_dtype(spec.precision, gpu=cuda)
    notes: list[str] = []
    tokens = fact_tokens(spec, notes)
    works = study_work(spec)
    full = [w for w in works if w.cfg.method == "full"]
    memory_gb = GPUS[gpu].memory_gb if gpu else spec.resources.gpu_memory_gb
    if cluster is not None and gpu is None:
        bundle = spec.resources.full_ft_worker if full and spec.resources.full_ft_worker else spec.resources.bundle()
        gpu, found = cluster_gpus(cluster, bundle)
        gpus = gpus or found
        memory_gb = memory_gb or GPUS[gpu].memory_gb
        notes.append(
            f"GPUs: {found} from the cluster's node types that can host {bundle}; planned on their smallest, {gpu}"
        )
    gpu_type = GPUS[gpu] if gpu else None

    peaks = []
    for work in works:
        if work.cfg.method == "full":
            continue
        rows = min(work.trials, DEFAULT_MICRO_BATCH) if work.packed else min(work.k, work.cfg.batch_size)
        peaks.append(unit_memory(model, work.cfg, rows, work.trials if work.packed else 1, tokens, dtype, cuda))
    worker_share = spec.resources.full_ft_worker.get("GPU", 0)
    worker = None
    if full:
        worker_cuda = worker_share > 0
        worker_dtype = planned_dtype(spec.precision, gpu=worker_cuda)
        worker = deepspeed_worker_memory(model, full[0].cfg, tokens, worker_dtype, worker_cuda)
        if not peaks:  # a full fine-tuning study: its DeepSpeed workers are what holds the model
            cuda, dtype = worker_cuda, worker_dtype
    unit = max(peaks, key=lambda m: m.total) if peaks else worker
    assert unit is not None  # every work is a unit's or a DeepSpeed worker's

    share = spec.resources.gpu
    units_per_gpu = None
    if peaks and share > 0 and memory_gb:
        offered = share * memory_gb * GIB
        if unit.total > offered:
            raise PlanError(
                f"{spec.name}: a unit needs {unit.total / GIB:.1f} GiB ({_parts(unit)}) but resources.gpu: {share} "
                f"of a {memory_gb:g} GB GPU offers {offered / GIB:.1f} GiB; raise resources.gpu, lower pack_size "
                f"or use precision bfloat16"
            )
        units_per_gpu = int(memory_gb * GIB // unit.total)
    if worker and worker_share and memory_gb:
        offered = worker_share * memory_gb * GIB
        if worker.total > offered:
            raise PlanError(
                f"{spec.name}: a DeepSpeed worker needs {worker.total / GIB:.1f} GiB ({_parts(worker)}) but "
                f"resources.full_ft_worker GPU: {worker_share} of a {memory_gb:g} GB GPU offers "
                f"{offered / GIB:.1f} GiB; raise trial.num_workers or trial.zero_stage"
            )
        if not peaks:
            units_per_gpu = int(memory_gb * GIB // worker.total)

    shape = ModelShape.of_model(model, works[0].cfg)
    base_facts = sum(w.units * w.trials * w.k for w in works)  # an upper bound: facts repeat across points
    unit_flops = [w.trials * trial_flops(ModelShape.of_model(model, w.cfg), w, tokens) for w in works]
    flops = base_flops(shape, base_facts, tokens) + sum(w.units * f for w, f in zip(works, unit_flops))
    gpu_hours = wall = None
    if gpu_type and gpus:
        per_unit = max(share, worker_share * full[0].cfg.num_workers if full else 0)
        if per_unit <= 0:
            raise PlanError(
                f"{spec.name}: GPU time asked ({gpus} x {gpu_type.name}) but its units reserve no GPU "
                "(resources.gpu is 0); set resources.gpu, or plan without --gpu / --cluster"
            )
        concurrent = max(1, min(spec.max_concurrent, int(gpus / per_unit)))
        weight_bytes = sum(p.numel() for p in model.parameters()) * torch.finfo(dtype).bits // 8
        compute, read = gpu_type.peak_tflops * 1e12 * mfu, gpu_type.memory_gbps * 1e9
        seconds = sum(
            w.units * (f / compute + weight_passes(w, tokens) * weight_bytes / read) for w, f in zip(works, unit_flops)
        )
        base_batches = base_facts * (1 + tokens.locality) / TABLE_BATCH
        base_seconds = (
            base_flops(shape, base_facts, tokens) / compute
            + base_batches * (max(1, round(tokens.target)) + 1) * weight_bytes / read
        )
        load = weight_bytes / (LOAD_GBPS * 1e9)
        gpu_hours = (seconds + base_seconds + concurrent * load) * per_unit / 3600
        wall = (seconds / concurrent + load + base_seconds) / 3600
        notes.append(
            f"time per unit: its FLOPs at MFU {mfu:g} plus its passes over the {weight_bytes / 1e9:.1f} GB of "
            f"weights at {gpu_type.memory_gbps:g} GB/s; {concurrent} units at once (max_concurrent "
            f"{spec.max_concurrent}, {per_unit:g} GPUs a unit), each worker loading the model once ({load:.0f} s "
            f"at {LOAD_GBPS:g} GB/s); the base answers first ({base_seconds:.0f} s); Ray and MLflow overheads not counted"
        )
    return StudyPlan(
        name=spec.name,
        model=spec.model,
        params_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        dtype=str(dtype).removeprefix("torch."),
        device="cuda" if cuda else "cpu",
        trials=count_trials(spec),
        units=sum(w.units for w in works),
        packs=sum(w.units for w in works if w.packed),
        pack_size=spec.pack_size,
        tokens=tokens,
        unit=unit,
        holder="unit" if peaks else "DeepSpeed worker",
        full_ft_worker=worker,
        gpu=gpu_type,
        gpu_share=share,
        units_per_gpu=units_per_gpu,
        flops=flops,
        mfu=mfu,
        gpus=gpus or 0,
        gpu_hours=gpu_hours,
        wall_hours=wall,
        notes=notes,
    )


def check_fit(spec: StudySpec) -> StudyPlan | None:
    """The spec check's memory rule: a spec that reserves GPUs (units or DeepSpeed workers) and declares ``resources.gpu_memory_gb``
    is planned, and refused (``PlanError``) when its unit does not fit the share. None when it declares none."""
    if (spec.resources.gpu > 0 or spec.resources.full_ft_worker.get("GPU", 0) > 0) and spec.resources.gpu_memory_gb:
        return plan_study(spec)
    return None


def _parts(memory: UnitMemory) -> str:
    return ", ".join(f"{name} {value:g}" for name, value in memory.gib().items() if name != "total")


def cluster_gpus(cluster: dict, bundle: dict[str, float]) -> tuple[str, int]:
    """The GPUs of the cluster.yaml node types whose resources can host ``bundle``: the type with the least
    memory (a unit must fit wherever Ray places it) and the count over all of them at their ``max_workers``."""
    hosts = [
        node
        for node in cluster.get("available_node_types", {}).values()
        if all(node.get("resources", {}).get(name, 0) >= amount for name, amount in bundle.items() if name != "CPU")
        and node.get("resources", {}).get("GPU", 0) > 0
    ]
    if not hosts:
        raise PlanError(f"no node type of the cluster offers a unit's resources {bundle} with a GPU")
    types = [node["node_config"].get("InstanceType", "") for node in hosts]
    unknown = [t for t in types if t not in INSTANCE_GPUS]
    if unknown:
        raise PlanError(f"unknown GPUs of instance types {unknown} (known: {sorted(INSTANCE_GPUS)}); pass --gpu")
    smallest = min((INSTANCE_GPUS[t] for t in types), key=lambda kind: GPUS[kind].memory_gb)
    return smallest, sum(int(node["resources"]["GPU"]) * int(node.get("max_workers", 1)) for node in hosts)
