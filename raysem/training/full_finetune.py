"""Full fine-tuning with DeepSpeed ZeRO on Ray Train workers (gloo on CPU, NCCL on A100 GPU nodes).

The driver builds a Ray Train ``TorchTrainer``; every worker loads the model, wraps all of its
parameters in a DeepSpeed engine and trains data-parallel on its share of each step's batch;
rank 0 then evaluates the test facts and returns the trial's result as the run's return value
(``Result.return_value``), so nothing has to travel through shared storage or checkpoints.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from raysem.data.facts import Fact
from raysem.models.device import Precision, resolve_dtype
from raysem.models.encoding import encode_targets, target_logits
from raysem.models.loader import LoadedModel, load_model
from raysem.models.prompts import Prompting
from raysem.semantics.embedding import AnswerEmbedder
from raysem.semantics.evaluate import BaseRecord, check_base
from raysem.semantics.loss import reweighted_loss
from raysem.training.config import TrialConfig
from raysem.training.optim import build_optimizer
from raysem.training.results import TrialResult
from raysem.training.trial import NonFiniteLossError, batch_tokens, finish_trial, train_batches

T = TypeVar("T")

A100_WORKER: dict[str, float] = {"A100": 1, "GPU": 1}
"""``resources_per_worker`` that puts each worker on one GPU of a node carrying the ``A100`` custom resource."""


class NonFiniteGradientError(NonFiniteLossError):
    """NaN/inf gradients under a finite loss. DeepSpeed would skip such a step silently (plain training
    would carry the NaNs into the weights and fail on the next loss), so the trial fails here instead."""

    def __str__(self) -> str:
        return f"gradients are not finite (loss {self.loss}) on the batch of facts {', '.join(self.fact_ids)}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.fact_ids, self.loss))


@dataclass(frozen=True)
class _Diverged:
    """What the workers hand back instead of raising, when a step's loss or gradients are not finite."""

    fact_ids: list[str]
    loss: float
    gradients: bool

    def error(self) -> NonFiniteLossError:
        return (NonFiniteGradientError if self.gradients else NonFiniteLossError)(self.fact_ids, self.loss)


class ClusterResourceError(RuntimeError):
    """The Ray cluster can never hold the requested training workers."""


def shard_for_rank(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous share of ``items``: sizes differ by at most one, earlier ranks take the extra."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    base, extra = divmod(len(items), world_size)
    start = rank * base + min(rank, extra)
    return list(items[start : start + base + (rank < extra)])


def deepspeed_config(cfg: TrialConfig, world_size: int, batch_size: int, dtype: torch.dtype) -> dict[str, Any]:
    """The DeepSpeed config of a trial: ZeRO stage ``cfg.zero_stage``, no gradient accumulation, clipping
    only when ``cfg.max_grad_norm`` is set, DeepSpeed's bf16 or fp16 mode when ``dtype`` is one of them (the
    spec's ``precision`` resolved on the worker's device; float32: neither). The optimizer is the client's
    (``build_optimizer``: AdamW or SGD), so the config names none."""
    micro = max(1, math.ceil(batch_size / world_size))
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "gradient_clipping": float(cfg.max_grad_norm or 0.0),
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _gathered_model(
    engine: Any, model: str, prompting: Prompting, rank: int, device: torch.device | None
) -> LoadedModel | None:
    """ZeRO-3 partitions the weights: gather them (a collective), free the engine, and load them into a
    fresh copy on rank 0 (on ``device`` in bf16 when training ran on a GPU)."""
    import deepspeed

    params = dict(engine.module.named_parameters())
    state: dict[str, torch.Tensor] = {}
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        if rank == 0:
            state = {name: p.detach().cpu().clone() for name, p in params.items()}
    engine.destroy()
    if rank != 0:
        return None
    if device is None:
        tuned = load_model(model, prompting=prompting)
    else:
        torch.cuda.empty_cache()
        tuned = load_model(model, dtype=torch.bfloat16, device=str(device), prompting=prompting)
    names = set(dict(tuned.model.named_parameters()))
    if names != set(state):
        raise RuntimeError(f"gathered weights do not match {model}: {sorted(names ^ set(state))[:5]}")
    tuned.model.load_state_dict(state, strict=False)  # tied weights appear once among the parameters
    return tuned


def shard_loss(
    model: nn.Module,
    lm: LoadedModel,
    batch_facts: Sequence[Fact],
    base: dict[str, BaseRecord],
    cfg: TrialConfig,
    rank: int,
    world_size: int,
) -> torch.Tensor:
    """This rank's part of the batch loss: Σ over its shard of (1 + γ·λ_i)·L_i, times ``world_size / |batch|``.

    Averaged over the ranks (as the engine averages gradients) it is the batch's mean re-weighted loss,
    even when shards are unequal. A rank without facts gets a zero-weighted row, so that it still takes
    part in the gradient collectives.
    """
    shard = shard_for_rank(batch_facts, rank, world_size)
    rows, scale = (shard, world_size / len(batch_facts)) if shard else (list(batch_facts[:1]), 0.0)
    device = next(model.parameters()).device
    batch = encode_targets(lm, [f.prompt for f in rows], [f.target for f in rows]).to(device)
    distances = [base[f.id]["dist_old"] for f in rows]
    return reweighted_loss(target_logits(model, batch), batch.labels, distances, cfg.gamma, reduction="sum") * scale


def _train_worker(config: dict[str, Any]) -> TrialResult | _Diverged | None:
    """``train_loop_per_worker``: DeepSpeed data-parallel training; rank 0 evaluates and returns the result."""
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    # On CPU DeepSpeed would JIT-build a shared-memory op with the system compiler (minutes, on every
    # fresh node); it only serves tensor-parallel inference all-reduces, ZeRO training runs on gloo.
    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False

    cfg: TrialConfig = config["cfg"]
    train_facts: list[Fact] = config["train_facts"]
    base: dict[str, BaseRecord] = config["base"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    lm = load_model(config["model"], prompting=config["prompting"])
    embedder = AnswerEmbedder.from_model(lm, copy=True) if rank == 0 else None
    device = ray.train.torch.get_device() if config["use_gpu"] else None
    if device is not None:
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    optimizer = build_optimizer(lm.model.parameters(), cfg)
    batch_size = min(cfg.batch_size, len(train_facts))
    engine, *_ = deepspeed.initialize(
        model=lm.model,
        optimizer=optimizer,
        config=deepspeed_config(
            cfg, world, batch_size, resolve_dtype(config["precision"], "cuda" if config["use_gpu"] else "cpu")
        ),
        dist_init_required=False,
    )
    engine.train()
    loss_curve: list[float] = []
    tokens = 0
    for batch_facts in train_batches(train_facts, cfg):
        loss = shard_loss(engine.module, lm, batch_facts, base, cfg, rank, world)
        batch_loss = loss.detach().float().clone()
        dist.all_reduce(batch_loss)
        value = batch_loss.item() / world
        # Every rank sees the same loss and the same skipped step, so all stop together and rank 0
        # reports it (the driver raises: no exception has to cross process boundaries).
        if not math.isfinite(value):
            return _Diverged([f.id for f in batch_facts], value, gradients=False) if rank == 0 else None
        engine.backward(loss)
        engine.step()
        if not engine.was_step_applied():
            return _Diverged([f.id for f in batch_facts], value, gradients=True) if rank == 0 else None
        loss_curve.append(value)
        tokens += batch_tokens(batch_facts, base)
    engine.eval()
    tuned = _gathered_model(engine, config["model"], config["prompting"], rank, device) if cfg.zero_stage == 3 else lm
    if rank != 0:
        return None
    assert tuned is not None and embedder is not None, "rank 0 holds the gathered model and the embedder"
    return finish_trial(
        tuned,
        embedder,
        train_facts,
        config["test_facts"],
        base,
        cfg,
        trial_id=config["trial_id"],
        loss_curve=loss_curve,
        tokens=tokens,
    )


def _check_cluster_resources(num_workers: int, per_worker: dict[str, float]) -> None:
    import ray

    total = ray.cluster_resources()
    short = {k: v * num_workers for k, v in per_worker.items() if total.get(k, 0.0) < v * num_workers}
    if short:
        have = {k: total.get(k, 0.0) for k in short}
        raise ClusterResourceError(
            f"full fine-tuning needs {num_workers} workers × {per_worker}: the cluster has {have} of {short}"
        )


def run_full_finetune(
    model: str,
    train_facts: list[Fact],
    test_facts: list[Fact],
    base: dict[str, BaseRecord],
    cfg: TrialConfig,
    *,
    use_gpu: bool = False,
    precision: Precision = "auto",
    resources_per_worker: dict[str, float] | None = None,
    storage_path: str | None = None,
    trial_id: str = "",
    wait_for_resources: bool = False,
    prompting: Prompting | None = None,
    max_failures: int = 0,
) -> TrialResult:
    """Fine-tune every weight of ``model`` on ``train_facts`` with DeepSpeed ZeRO on ``cfg.num_workers``
    Ray Train workers, then evaluate ``test_facts``; the records follow ``raysem.training.results.RECORD_FIELDS``.

    Training follows the shared trial semantics: ``cfg.steps`` optimizer steps over the batches of
    ``raysem.training.trial.train_batches``; each step's batch is split across ranks (``shard_for_rank``) and the
    engine's gradient average equals the gradient of the batch's mean re-weighted loss. ``base`` holds
    the base model's rows (y_old, dist_old, ...) for every train and test fact.

    Locally (``use_gpu=False``) workers take one CPU each, talk over gloo and run DeepSpeed's CPU
    accelerator in fp32 (no op is compiled). On a cluster, call it with ``use_gpu=True,
    resources_per_worker=A100_WORKER`` (``{"A100": 1, "GPU": 1}``): each worker then lands on a
    GPU of a node that carries the ``A100`` custom resource, talks over NCCL and trains in ``precision``
    (``auto``: bf16 on a GPU, fp32 on CPU), through DeepSpeed's own bf16/fp16 modes.

    Ray must be initialised already. Unless ``wait_for_resources`` (for autoscaling clusters), a
    cluster whose total resources can never hold the workers raises ``ClusterResourceError`` at once
    instead of waiting forever. A NaN/inf loss (or NaN/inf gradients, which DeepSpeed would skip)
    raises ``NonFiniteLossError`` naming the batch's facts.

    From a Ray Tune function trainable (the Train V2 + Tune pattern, V2 being the default in Ray
    2.60): call this inside the trainable with ``trial_id=tune.get_context().get_trial_id()`` (it
    names the Train run under ``storage_path``, default ``~/ray_results``, so a restarted trial finds
    its run again) and ``tune.report`` what it returns. The Tune trial is only the run's driver: its
    own resources (Tune's default of 1 CPU) are separate from the workers', which the Train run
    reserves itself; cap ``TuneConfig(max_concurrent_trials=...)`` at the A100 GPUs divided by
    ``cfg.num_workers`` so that waiting drivers do not pile up.

    A lost worker or node (a preempted A100 node) restarts the worker group up to ``max_failures`` times
    (-1: forever), whatever Ray Train classes the failure as (training, controller or preemption);
    beyond that ``fit`` raises ``ray.train.TrainingFailedError``, which is left to the caller (a Tune
    trial fails, and Tune retries it under its own failure policy).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if cfg.method != "full":
        raise ValueError(f"run_full_finetune trains every weight: cfg.method must be 'full', got {cfg.method!r}")
    if not train_facts or not test_facts:
        raise ValueError("full fine-tuning needs at least one training fact and one test fact")
    check_base([*train_facts, *test_facts], base)
    per_worker = dict(resources_per_worker or ({"GPU": 1} if use_gpu else {"CPU": 1}))
    if use_gpu:
        per_worker.setdefault("GPU", 1)
    if not wait_for_resources:
        _check_cluster_resources(cfg.num_workers, per_worker)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "model": model,
            "prompting": prompting or Prompting(),
            "train_facts": list(train_facts),
            "test_facts": list(test_facts),
            "base": {f.id: base[f.id] for f in [*train_facts, *test_facts]},
            "cfg": cfg,
            "use_gpu": use_gpu,
            "precision": precision,
            "trial_id": trial_id,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"full-finetune-{trial_id or uuid.uuid4().hex[:12]}",
            storage_path=storage_path,
            failure_config=FailureConfig(
                max_failures=max_failures, controller_failure_limit=max_failures, max_preemption_failures=max_failures
            ),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cuda" if use_gpu else "cpu"}},
        ),
    )
    started = time.perf_counter()
    outcome = trainer.fit().return_value
    if isinstance(outcome, _Diverged):
        raise outcome.error()
    outcome.aggregates["wall_s"] = time.perf_counter() - started
    return outcome
