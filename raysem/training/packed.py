"""Packed LoRA trials: many independent single-fact LoRA trials in one batched forward/backward.

Each trial keeps its own LoRA weights, stacked with a leading trial dimension in every target
module; a row→trial map (set before each forward) routes every batch row through its own
trial's adapter. The summed per-trial losses give each trial exactly its own gradient, and
AdamW is element-wise, so one optimizer over the stacked tensors trains every trial as if it
ran alone (up to float rounding).

On CUDA, training runs the forward under bf16 autocast by default (``autocast``): the frozen base
runs in bf16 while the LoRA weights, their gradients and the AdamW state stay float32. The step loop
reads nothing back to the host but one flag per step (did any trial's loss turn NaN/inf?).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raysem.data.facts import Fact
from raysem.models.encoding import IGNORE_INDEX, TargetBatch, encode_targets, target_logits
from raysem.models.loader import LoadedModel
from raysem.semantics.embedding import AnswerEmbedder
from raysem.semantics.evaluate import BaseRecord, check_base, evaluate_facts
from raysem.semantics.loss import check_gamma, loss_weights, per_example_loss
from raysem.training.config import TrialConfig, check_packable
from raysem.training.optim import build_optimizer
from raysem.training.results import TrialResult, trial_aggregates


def is_target_module(name: str, target_modules: Sequence[str]) -> bool:
    """PEFT's suffix rule for a list of target module names."""
    return any(name == t or name.endswith("." + t) for t in target_modules)


def lora_init(seed: int, shapes: Sequence[tuple[int, int]], rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(A, B) for each target module of shape (in, out), drawn as PEFT does after ``torch.manual_seed(seed)``.

    PEFT builds ``nn.Linear(in, r)`` and ``nn.Linear(r, out)`` (each drawing its default
    kaiming-uniform weight), then redraws A with ``kaiming_uniform_(a=sqrt(5))`` and zeroes B,
    module by module in ``named_modules`` order. The same draws come from a private generator,
    so the global random state is left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    out = []
    for d_in, d_out in shapes:
        lora_a = torch.empty(rank, d_in, dtype=torch.float32)
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=generator)
        nn.init.kaiming_uniform_(torch.empty(d_out, rank, dtype=torch.float32), a=math.sqrt(5), generator=generator)
        nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5), generator=generator)
        out.append((lora_a, torch.zeros(d_out, rank, dtype=torch.float32)))
    return out


@dataclass
class RowMap:
    """Which trial each batch row belongs to; ``index`` None means row k is trial k."""

    index: torch.Tensor | None = None


class PackedLoraLinear(nn.Module):
    """``base(x) + scale · B_t(A_t x)`` with t the trial of each row, for K trials at once.

    ``lora_A`` is (K, r, in) and ``lora_B`` (K, out, r), kept in float32 (as PEFT keeps LoRA
    weights of half-precision models); inputs are cast to it and the sum back to the base dtype.
    Under autocast the two batched products run in the autocast dtype instead (the float32
    weights are cast per forward; their gradients come back in float32).
    """

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, rows: RowMap):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(lora_a)
        self.lora_B = nn.Parameter(lora_b)
        self.scale = scale
        self.rows = rows
        self._gathered: tuple | None = None

    def _routed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-row adapters; without autograd they are gathered once per row map (generation reuses them)."""
        index = self.rows.index
        if index is None:
            return self.lora_A, self.lora_B
        if torch.is_grad_enabled():
            return self.lora_A.index_select(0, index), self.lora_B.index_select(0, index)
        versions = (self.lora_A._version, self.lora_B._version)
        if self._gathered is None or self._gathered[0] is not index or self._gathered[1] != versions:
            gathered = self.lora_A.detach().index_select(0, index), self.lora_B.detach().index_select(0, index)
            self._gathered = (index, versions, *gathered)
        return self._gathered[2], self._gathered[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        lora_a, lora_b = self._routed()
        if x.shape[0] != lora_a.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} rows but the row map routes {lora_a.shape[0]}")
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else lora_a.dtype
        rows = x.reshape(x.shape[0], -1, x.shape[-1]).to(dtype)
        hidden = torch.bmm(rows, lora_a.to(dtype).transpose(1, 2))
        # result + scale · B(A x) in one batched GEMM
        out = torch.baddbmm(
            result.reshape(*rows.shape[:2], -1).to(dtype), hidden, lora_b.to(dtype).transpose(1, 2), alpha=self.scale
        )
        return out.view(result.shape).to(result.dtype)


@dataclass
class PackedLora:
    """K trials' LoRA adapters attached to a base model; ``detach`` puts the original modules back."""

    model: nn.Module
    layers: dict[str, PackedLoraLinear]
    rows: RowMap
    n_trials: int
    _requires_grad: dict[str, bool] = field(default_factory=dict)

    def set_rows(self, trials: Sequence[int] | torch.Tensor | None) -> None:
        """Route batch row i through trial ``trials[i]``; None routes row k through trial k (K rows).

        A tensor (long, on the adapters' device) is taken as it is, unchecked: no host round trip.
        """
        if trials is None or isinstance(trials, torch.Tensor):
            self.rows.index = trials
            return
        bad = [t for t in trials if not 0 <= t < self.n_trials]
        if bad:
            raise IndexError(f"trials {bad[:5]} outside 0..{self.n_trials - 1}")
        device = next(iter(self.layers.values())).lora_A.device
        self.rows.index = torch.as_tensor(list(trials), dtype=torch.long, device=device)

    def parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.layers.values():
            yield layer.lora_A
            yield layer.lora_B

    def trial_weights(self, trial: int) -> dict[str, torch.Tensor]:
        """Trial ``trial``'s adapter, named as PEFT names it (``<module>.lora_A.weight`` / ``.lora_B.weight``)."""
        out = {}
        for name, layer in self.layers.items():
            out[f"{name}.lora_A.weight"] = layer.lora_A.detach()[trial]
            out[f"{name}.lora_B.weight"] = layer.lora_B.detach()[trial]
        return out

    def detach(self) -> nn.Module:
        """Remove the adapters: the original modules and ``requires_grad`` flags come back untouched."""
        for name, layer in self.layers.items():
            parent, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, layer.base)
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, param.requires_grad))
        self.layers = {}
        return self.model


def attach_packed_lora(
    model: nn.Module, seeds: Sequence[int], rank: int, alpha: float, target_modules: Sequence[str]
) -> PackedLora:
    """Wrap every target ``nn.Linear`` with K = ``len(seeds)`` LoRA adapters and freeze the base model.

    Trial k's adapter equals what ``torch.manual_seed(seeds[k])`` followed by
    ``peft.get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=...))`` creates.
    """
    if not seeds:
        raise ValueError("packed LoRA needs at least one trial")
    targets = [(name, module) for name, module in model.named_modules() if is_target_module(name, target_modules)]
    if not targets:
        raise ValueError(f"no module of the model matches target_modules {list(target_modules)}")
    wrong = [name for name, module in targets if type(module) is not nn.Linear]
    if wrong:
        raise TypeError(f"packed LoRA supports nn.Linear targets only; {wrong[0]} is not one")
    shapes = [(m.in_features, m.out_features) for _, m in targets]
    inits = [lora_init(seed, shapes, rank) for seed in seeds]
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.requires_grad_(False)
    rows = RowMap()
    layers = {}
    for j, (name, module) in enumerate(targets):
        dtype = module.weight.dtype
        # PEFT moves new adapters to the base layer's dtype, then upcasts half precision to float32.
        kept = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        stacked_a = torch.stack([init[j][0] for init in inits]).to(module.weight.device, dtype).to(kept)
        stacked_b = torch.stack([init[j][1] for init in inits]).to(module.weight.device, dtype).to(kept)
        layers[name] = PackedLoraLinear(module, stacked_a, stacked_b, alpha / rank, rows)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layers[name])
    return PackedLora(model, layers, rows, len(seeds), requires_grad)


@dataclass
class PackedTraining:
    """What training a pack left per trial: loss curve, optimizer steps and tokens done, and failures."""

    loss_curves: list[list[float]]
    steps: list[int]
    tokens: list[int]
    failed: dict[int, str] = field(default_factory=dict)
    """Trial → error message, for trials whose loss turned NaN/inf (their adapters stay as they were then)."""


def _rows(batch: TargetBatch, rows: list[int]) -> TargetBatch:
    """The given rows of a right-padded batch, cut to the longest of them (no all-padding columns)."""
    index = torch.as_tensor(rows, dtype=torch.long, device=batch.input_ids.device)
    sub = [t.index_select(0, index) for t in (batch.input_ids, batch.attention_mask, batch.positions, batch.labels)]
    length, width = int(sub[1].sum(1).max()), int((sub[3] != IGNORE_INDEX).sum(1).max())
    return TargetBatch(sub[0][:, :length], sub[1][:, :length], sub[2][:, :width], sub[3][:, :width])


def _micro_batches(rows: list[int], lengths: list[int], size: int | None) -> list[list[int]]:
    """``rows`` sorted by sequence length and cut into groups of ``size`` (all in one when None)."""
    order = sorted(rows, key=lambda k: lengths[k])
    size = size or len(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def _clip_per_trial(params: list[nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each trial's slices of the stacked gradients on its own."""
    norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in params], dim=1).norm(dim=1)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(coef.view(-1, *([1] * (p.dim() - 1))))


DEFAULT_MICRO_BATCH = 16
"""Rows per forward/backward in packed training: on CPU, GEMMs of 16 rows of ~50 tokens already run
near the matmul peak, and length-sorted groups of 16 cut the padding a whole pack would carry."""


@dataclass(frozen=True)
class _Group:
    """One micro-batch of a step, prepared once per set of live trials (nothing in it is recomputed per step)."""

    trials: torch.Tensor
    """The group's trials (= their rows of the pack's batch), on the device."""
    route: torch.Tensor | None
    """The row map for ``PackedLora.set_rows``: None when the group is the whole pack in order."""
    batch: TargetBatch
    weights: torch.Tensor


def _plan(
    batch: TargetBatch, weights: torch.Tensor, alive: list[int], lengths: list[int], size: int | None
) -> list[_Group]:
    """The micro-batches of the live trials (see ``_micro_batches``), with their sub-batches and index tensors."""
    n, device = batch.input_ids.shape[0], batch.input_ids.device
    groups = []
    for rows in _micro_batches(alive, lengths, size):
        trials = torch.as_tensor(rows, dtype=torch.long, device=device)
        whole = rows == list(range(n))
        sub = batch if whole else _rows(batch, rows)
        groups.append(_Group(trials, None if whole else trials, sub, weights.index_select(0, trials)))
    return groups


def train_packed(
    lm: LoadedModel,
    packed: PackedLora,
    facts: Sequence[Fact],
    cfgs: Sequence[TrialConfig],
    base: dict[str, BaseRecord],
    micro_batch: int | None = DEFAULT_MICRO_BATCH,
    autocast: bool | None = None,
) -> PackedTraining:
    """Train trial k on ``facts[k]`` with ``cfgs[k]`` for the pack's shared number of steps.

    Each step's loss is Σ_k L'_k, L'_k being trial k's ``reweighted_loss(..., reduction="mean")``
    on its one row, so every trial gets its own gradient. Rows go through the model in
    length-sorted groups of ``micro_batch`` (None: all at once) whose gradients add up before
    the one optimizer step; each trial's row is in exactly one group, so that changes nothing
    but padding and memory. A trial whose loss turns NaN/inf is recorded as failed at that step,
    its row leaves the batch, and its adapter slices are kept exactly as they were (no gradient,
    no AdamW momentum or weight decay) while the others go on. ``autocast``: run the forward
    under bf16 autocast (None: on when the model is on CUDA); see :func:`train_packed_batch`.
    """
    cfg = check_packable(cfgs)
    if len(facts) != len(cfgs) or len(cfgs) != packed.n_trials:
        raise ValueError(f"{len(facts)} facts, {len(cfgs)} configs and {packed.n_trials} packed adapters must match")
    device = lm.device
    batch = encode_targets(lm, [f.prompt for f in facts], [f.target for f in facts]).to(device)
    weights = torch.cat([loss_weights([base[f.id]["dist_old"]], check_gamma(c.gamma)) for f, c in zip(facts, cfgs)]).to(
        device
    )
    return train_packed_batch(
        lm.model, packed, batch, weights, cfg, [f"fact {f.id}" for f in facts], micro_batch, autocast
    )


def train_packed_batch(
    model: nn.Module,
    packed: PackedLora,
    batch: TargetBatch,
    weights: torch.Tensor,
    cfg: TrialConfig,
    names: Sequence[str],
    micro_batch: int | None = DEFAULT_MICRO_BATCH,
    autocast: bool | None = None,
) -> PackedTraining:
    """:func:`train_packed` on an encoded batch: row k is trial k's sequence, its loss weighted by
    ``weights[k]``; ``names[k]`` names it in a failure message.

    With ``autocast`` (None: when the batch is on CUDA) forwards run under
    ``torch.autocast(dtype=torch.bfloat16)``: the base model's matmuls and the LoRA products in
    bf16, the loss in float32; the LoRA weights, gradients and optimizer state stay float32.
    Per-step losses stay on the device; the host reads one flag per step (any new NaN/inf loss?)
    and the loss curves once at the end.
    """
    n = packed.n_trials
    if batch.input_ids.shape[0] != n or len(weights) != n or len(names) != n:
        raise ValueError(
            f"{batch.input_ids.shape[0]} rows, {len(weights)} weights and {len(names)} names for {n} packed adapters"
        )
    device = batch.input_ids.device
    autocast = device.type == "cuda" if autocast is None else autocast
    row_tokens = batch.attention_mask.sum(1).tolist()
    params = list(packed.parameters())
    optimizer = build_optimizer(params, cfg)
    dtype = torch.promote_types(weights.dtype, next(model.parameters()).dtype)  # the losses' dtype: float32, or float64
    losses = torch.full((cfg.steps, n), math.nan, dtype=dtype, device=device)
    dead = torch.zeros(n, dtype=torch.bool, device=device)
    fail_step: dict[int, int] = {}
    failed: dict[int, str] = {}
    frozen: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    alive = list(range(n))
    plan = _plan(batch, weights, alive, row_tokens, micro_batch)
    done = cfg.steps
    with torch.enable_grad():
        for step in range(cfg.steps):
            for group in plan:
                packed.set_rows(group.route)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = target_logits(model, group.batch)
                row_losses = per_example_loss(logits, group.batch.labels, check=False) * group.weights
                losses[step].index_copy_(0, group.trials, row_losses.detach())
                # NaN/inf rows get no gradient from the loss; what their NaN activations leave in their own
                # trials' adapter gradients is zeroed below, once the host knows which trials they were
                torch.where(torch.isfinite(row_losses), row_losses, 0.0).sum().backward()
            if not bool((torch.isfinite(losses[step]) | dead).all()):  # the step's one host read
                values = losses[step].tolist()
                newly = [k for k in alive if not math.isfinite(values[k])]
                for k in newly:
                    failed[k] = f"non-finite loss ({values[k]}) at step {step} on {names[k]}"
                    fail_step[k] = step
                index = torch.as_tensor(newly, dtype=torch.long, device=device)
                dead[index] = True
                frozen.append((index, [p.detach().index_select(0, index).clone() for p in params]))
                alive = [k for k in alive if k not in failed]
                if not alive:
                    done = step
                    break
                plan = _plan(batch, weights, alive, row_tokens, micro_batch)
            with torch.no_grad():
                for index, _ in frozen:
                    for p in params:
                        p.grad.index_fill_(0, index, 0.0)
                if cfg.max_grad_norm:
                    _clip_per_trial(params, cfg.max_grad_norm)
                optimizer.step()
                for index, saved in frozen:
                    for p, value in zip(params, saved):
                        p.index_copy_(0, index, value)
            optimizer.zero_grad(set_to_none=True)
    packed.set_rows(None)
    optimizer.zero_grad(set_to_none=True)
    curves = losses.T.tolist()
    steps = [fail_step.get(k, done) for k in range(n)]
    return PackedTraining(
        loss_curves=[curve[:s] for curve, s in zip(curves, steps)],
        steps=steps,
        tokens=[s * t for s, t in zip(steps, row_tokens)],
        failed=failed,
    )


def evaluate_packed(
    lm: LoadedModel,
    packed: PackedLora,
    facts: Sequence[Fact],
    trials: Sequence[int],
    base: dict[str, BaseRecord],
    embedder: AnswerEmbedder,
    batch_size: int = 64,
    ignore_case: bool = False,
) -> list[dict[str, Any]]:
    """``evaluate_facts`` for many trials at once: ``facts[i]`` is evaluated through trial ``trials[i]``'s adapter.

    Generation batches mix trials; every row (prompt, rephrasing, probe) goes through the adapter
    of the trial its fact belongs to, so each record equals that trial's evaluation alone.
    """
    if len(facts) != len(trials):
        raise ValueError(f"{len(facts)} facts but {len(trials)} trials")
    try:
        return evaluate_facts(
            lm,
            facts,
            base,
            embedder,
            batch_size,
            ignore_case,
            before_batch=lambda rows: packed.set_rows([trials[r] for r in rows]),
        )
    finally:
        packed.set_rows(None)


def default_trial_id(fact: Fact, cfg: TrialConfig) -> str:
    return f"{fact.id}-s{cfg.seed}-g{cfg.gamma:g}"


def run_packed_trials(
    lm: LoadedModel,
    facts: Sequence[Fact],
    cfgs: Sequence[TrialConfig],
    base: dict[str, BaseRecord],
    embedder: AnswerEmbedder,
    trial_ids: Sequence[str] | None = None,
    eval_batch_size: int = 64,
    micro_batch: int | None = DEFAULT_MICRO_BATCH,
    autocast: bool | None = None,
) -> list[TrialResult]:
    """K single-fact LoRA trials (fact k with ``cfgs[k]``) trained and evaluated as one pack.

    The configs must agree on everything but ``seed`` and ``gamma``. Each result equals that
    trial run alone (up to float rounding). ``micro_batch`` rows go through the model at a time
    in training (see :func:`train_packed`), ``eval_batch_size`` in evaluation; ``autocast`` trains under
    bf16 autocast (None: on CUDA; evaluation runs without it). Aggregates add to ``raysem.training.results.aggregate``:
    ``failed``, ``steps``, ``tokens`` (prompt+target tokens trained on, summed over steps),
    ``final_loss`` (the last step's L'), ``wall_s`` (the pack's wall time divided by K),
    ``pack_wall_s``, ``pack_train_s`` (its training part) and ``pack_size``. A trial whose loss
    turns NaN/inf comes back with ``failed = 1.0``, no records, and ``analysis["error"]``
    naming its fact; the others are unaffected.
    """
    if len(facts) != len(cfgs):
        raise ValueError(f"{len(facts)} facts but {len(cfgs)} trial configs")
    cfg = check_packable(cfgs)
    for c in cfgs:
        check_gamma(c.gamma)
    ids = list(trial_ids) if trial_ids is not None else [default_trial_id(f, c) for f, c in zip(facts, cfgs)]
    if len(ids) != len(facts):
        raise ValueError(f"{len(ids)} trial ids for {len(facts)} trials")
    check_base(facts, base)
    start = time.perf_counter()
    packed = attach_packed_lora(lm.model, [c.seed for c in cfgs], cfg.rank, cfg.alpha, cfg.targets(lm.model))
    try:
        run = train_packed(lm, packed, facts, cfgs, base, micro_batch, autocast)
        trained = [k for k in range(len(facts)) if k not in run.failed]
        train_s = time.perf_counter() - start
        evaluated = evaluate_packed(
            lm, packed, [facts[k] for k in trained], trained, base, embedder, eval_batch_size, cfg.ignore_case
        )
    finally:
        packed.detach()
    wall = time.perf_counter() - start
    records = dict(zip(trained, evaluated))
    results = []
    for k, (fact, c) in enumerate(zip(facts, cfgs)):
        curve = run.loss_curves[k]
        aggregates = trial_aggregates(
            [records[k]] if k in records else [],
            [fact.id],
            [base[fact.id]["dist_old"]],
            n_test=1,
            loss_curve=curve,
            steps=run.steps[k],
            tokens=run.tokens[k],
            wall_s=wall / len(facts),
            failed=k in run.failed,
        )
        aggregates.update(pack_wall_s=wall, pack_train_s=train_s, pack_size=float(len(facts)))
        results.append(
            TrialResult(
                trial_id=ids[k],
                config=c.model_dump(mode="json"),
                train_ids=[fact.id],
                test_ids=[fact.id],
                records=[records[k]] if k in records else [],
                aggregates=aggregates,
                loss_curve=list(curve),
                analysis={"error": run.failed[k]} if k in run.failed else {},
            )
        )
    return results
