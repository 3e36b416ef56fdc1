"""One knowledge-learning trial on a resident base model: attach a method, train, evaluate, remove it.

Training semantics (shared by every trial path): ``torch.manual_seed(cfg.seed)`` right before the
method is attached; AdamW over the method's trainable parameters (``lr``, ``weight_decay``, default
betas/eps); ``cfg.steps`` optimizer steps over :func:`train_batches`; each step's loss is
``reweighted_loss(target_logits(...), labels, dist_old, gamma, reduction="mean")`` (plus AdaLoRA's
orthogonal regulariser); gradients clipped only when ``cfg.max_grad_norm`` is set; a non-finite loss
raises :class:`NonFiniteLossError` naming the batch's facts.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from raysem.data.facts import Fact
from raysem.models.catalog import DEFAULT_MODEL
from raysem.models.encoding import encode_targets, target_logits
from raysem.models.loader import LoadedModel, load_model
from raysem.models.prompts import Prompting
from raysem.semantics.embedding import AnswerEmbedder
from raysem.semantics.evaluate import BaseRecord, base_records, check_base, evaluate_facts
from raysem.semantics.loss import reweighted_loss
from raysem.training.analysis import frobenius_analysis, has_lora_layers, last_token_features
from raysem.training.config import TrialConfig
from raysem.training.methods import Attachment, attach
from raysem.training.optim import build_optimizer
from raysem.training.results import TrialResult, trial_aggregates


class NonFiniteLossError(RuntimeError):
    """A training loss that is NaN or infinite; ``fact_ids`` are the facts of the offending batch."""

    def __init__(self, fact_ids: Sequence[str], loss: float) -> None:
        self.fact_ids = list(fact_ids)
        self.loss = loss
        super().__init__(f"training loss is {loss} on the batch of facts {', '.join(self.fact_ids)}")

    def __reduce__(self):
        return (type(self), (self.fact_ids, self.loss))


class ResidentModel:
    """A base model loaded once and kept in memory while trials run on it one after another.

    ``embedder`` snapshots the base input embeddings, so distances stay in the base model's space
    even while a trial (full fine-tuning) changes the live embedding table.
    """

    def __init__(
        self,
        model: str | LoadedModel = DEFAULT_MODEL,
        dtype: torch.dtype = torch.float32,
        device: str | None = None,
        prompting: Prompting | None = None,
    ) -> None:
        """``model`` is a loaded model (with its prompting) or a name/path for
        :func:`raysem.models.loader.load_model` (loaded once, here, with ``prompting``)."""
        if isinstance(model, LoadedModel) and prompting is not None and prompting != model.prompting:
            raise ValueError(f"prompting {prompting} differs from the loaded model's {model.prompting}")
        self.lm = (
            model
            if isinstance(model, LoadedModel)
            else load_model(model, dtype=dtype, device=device, prompting=prompting)
        )
        self.embedder = AnswerEmbedder.from_model(self.lm, copy=True)

    def base_records(self, facts: Sequence[Fact]) -> dict[str, BaseRecord]:
        """The base model's records of ``facts``, keyed by fact id (what :func:`run_trial` takes as ``base``)."""
        return {r["fact_id"]: r for r in base_records(self.lm, facts)}

    def run(
        self,
        train_facts: Sequence[Fact],
        test_facts: Sequence[Fact],
        base: dict[str, BaseRecord],
        cfg: TrialConfig,
        **kwargs: Any,
    ) -> TrialResult:
        """:func:`run_trial` on this model."""
        return run_trial(self, train_facts, test_facts, base, cfg, **kwargs)


def train_batches(train_facts: Sequence[Fact], cfg: TrialConfig) -> Iterator[list[Fact]]:
    """The ``cfg.steps`` training batches of a trial, in order.

    Each epoch is a permutation of the facts drawn from ``random.Random(cfg.seed)`` (one generator for
    the whole trial, reshuffled every epoch), cut into batches of ``min(cfg.batch_size, k)`` facts;
    the last batch of an epoch holds the remainder. A single-fact trial trains on its fact every step.
    """
    if not train_facts:
        raise ValueError("a trial needs at least one training fact")
    rng = random.Random(cfg.seed)
    size = min(cfg.batch_size, len(train_facts))
    order: list[int] = []
    for _ in range(cfg.steps):
        if not order:
            order = list(range(len(train_facts)))
            rng.shuffle(order)
        batch, order = order[:size], order[size:]
        yield [train_facts[i] for i in batch]


def batch_tokens(batch_facts: Sequence[Fact], base: dict[str, BaseRecord]) -> int:
    """Tokens a training step runs through the model: prompt plus target tokens of each fact."""
    return sum(int(base[f.id]["prompt_tokens"]) + int(base[f.id]["target_tokens"]) for f in batch_facts)


def check_finite(loss: torch.Tensor, batch_facts: Sequence[Fact]) -> torch.Tensor:
    """``loss`` unchanged, or :class:`NonFiniteLossError` naming the batch's facts."""
    if not bool(torch.isfinite(loss)):
        raise NonFiniteLossError([f.id for f in batch_facts], float(loss.detach()))
    return loss


def training_step(
    model: nn.Module, lm: LoadedModel, batch_facts: Sequence[Fact], base: dict[str, BaseRecord], cfg: TrialConfig
) -> torch.Tensor:
    """The re-weighted loss of one batch (mean over facts), ready for ``backward()``.

    ``model`` is the module being trained (``lm.model`` with a method attached, or the module a
    distributed engine wraps); ``lm`` provides the tokenizer and prompt format.
    """
    device = next(model.parameters()).device
    batch = encode_targets(lm, [f.prompt for f in batch_facts], [f.target for f in batch_facts], share_prefix=True).to(
        device
    )
    distances = [base[f.id]["dist_old"] for f in batch_facts]
    loss = reweighted_loss(target_logits(model, batch), batch.labels, distances, cfg.gamma, reduction="mean")
    return check_finite(loss, batch_facts)


def train(
    lm: LoadedModel,
    attachment: Attachment,
    train_facts: Sequence[Fact],
    base: dict[str, BaseRecord],
    cfg: TrialConfig,
) -> tuple[list[float], int]:
    """Run the trial's optimizer steps on the attached method; returns (loss per step, trained tokens)."""
    params = attachment.parameters()
    optimizer = build_optimizer(params, cfg)
    losses: list[float] = []
    tokens = 0
    attachment.train(True)
    for step, batch_facts in enumerate(train_batches(train_facts, cfg)):
        loss = training_step(lm.model, lm, batch_facts, base, cfg)
        extra = attachment.regularization()
        if extra is not None:
            loss = check_finite(loss + extra, batch_facts)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        attachment.after_step(step)
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        tokens += batch_tokens(batch_facts, base)
    attachment.train(False)
    return losses, tokens


def trial_analysis(lm: LoadedModel, test_facts: Sequence[Fact]) -> dict[str, Any]:
    """Table 2's Frobenius numbers (methods with LoRA factors) and Figure 5's test-prompt features."""
    analysis: dict[str, Any] = {"features": last_token_features(lm, [f.prompt for f in test_facts])}
    if has_lora_layers(lm.model):
        analysis["frobenius"] = frobenius_analysis(lm.model)
    return analysis


def finish_trial(
    lm: LoadedModel,
    embedder: AnswerEmbedder,
    train_facts: Sequence[Fact],
    test_facts: Sequence[Fact],
    base: dict[str, BaseRecord],
    cfg: TrialConfig,
    *,
    trial_id: str = "",
    loss_curve: Sequence[float] = (),
    tokens: int = 0,
    started: float | None = None,
    analysis: dict[str, Any] | None = None,
) -> TrialResult:
    """Evaluate the tuned model in ``lm`` on the test facts and assemble the trial's result.

    Aggregates are :func:`raysem.training.results.aggregate` of the test records, with ``dist_mean`` /
    ``dist_var`` taken over the TRAINING facts' defined target distances (``dist_undefined``: how many
    training facts had none, an empty y_old), plus ``steps``, ``tokens``,
    ``final_loss`` and ``wall_s`` (seconds since ``started``, a ``time.perf_counter()`` value).

    When the training set is not the test set (data filtering), accuracy is also split by what was
    trained: ``retained_accuracy`` on test facts still in the training set, ``replaced_accuracy``
    on those replaced (never trained), and ``trained_accuracy`` on every fact actually trained
    (the retained ones and the added ones, which are evaluated for it); ``n_retained`` and ``n_replaced``
    count the test facts of each kind.
    """
    tested = {f.id for f in test_facts}
    added = [f for f in train_facts if f.id not in tested]
    evaluated = evaluate_facts(
        lm, [*test_facts, *added], base, embedder, ignore_case=cfg.ignore_case
    )  # one decoding pass
    records = evaluated[: len(test_facts)]
    aggregates = trial_aggregates(
        records,
        [f.id for f in train_facts],
        [base[f.id]["dist_old"] for f in train_facts],
        n_test=len(test_facts),
        added_records=evaluated[len(test_facts) :],
        loss_curve=loss_curve,
        tokens=tokens,
        wall_s=time.perf_counter() - started if started is not None else math.nan,
    )
    return TrialResult(
        trial_id=trial_id,
        config=cfg.model_dump(mode="json"),
        train_ids=[f.id for f in train_facts],
        test_ids=[f.id for f in test_facts],
        records=records,
        aggregates=aggregates,
        loss_curve=list(loss_curve),
        analysis=analysis or {},
    )


def run_trial(
    resident: ResidentModel,
    train_facts: Sequence[Fact],
    test_facts: Sequence[Fact],
    base: dict[str, BaseRecord],
    cfg: TrialConfig,
    *,
    trial_id: str = "",
    analyses: bool = False,
) -> TrialResult:
    """Train ``cfg.method`` on ``train_facts``, evaluate on ``test_facts``, and restore the base model.

    ``base`` maps fact ids to base-model records (``dist_old`` weights the loss; ``y_old`` and the
    locality references feed the evaluation). With ``analyses`` the result also carries the
    Frobenius analysis and the test prompts' last-token features, taken before the method is removed.
    The method is removed even when training fails, so the resident model is always left as loaded.
    """
    started = time.perf_counter()
    if not test_facts:
        raise ValueError("a trial needs at least one test fact")
    check_base([*train_facts, *test_facts], base)
    lm = resident.lm
    torch.manual_seed(cfg.seed)
    with attach(lm.model, cfg) as attachment:
        loss_curve, tokens = train(lm, attachment, train_facts, base, cfg)
        analysis = trial_analysis(lm, test_facts) if analyses else None
        return finish_trial(
            lm,
            resident.embedder,
            train_facts,
            test_facts,
            base,
            cfg,
            trial_id=trial_id,
            loss_curve=loss_curve,
            tokens=tokens,
            started=started,
            analysis=analysis,
        )
