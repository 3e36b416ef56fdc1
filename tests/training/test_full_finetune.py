"""Full fine-tuning with DeepSpeed ZeRO on Ray Train: sharding, DeepSpeed config, and real runs on CPU."""

from __future__ import annotations

import pickle

import pytest
import torch

from raysem.data.facts import Fact, Probe
from raysem.training.config import TrialConfig
from raysem.training.full_finetune import (
    A100_WORKER,
    ClusterResourceError,
    NonFiniteGradientError,
    deepspeed_config,
    run_full_finetune,
    shard_for_rank,
    shard_loss,
)
from raysem.training.results import RECORD_FIELDS
from raysem.training.trial import NonFiniteLossError, batch_tokens, train_batches, training_step

FACTS = [
    Fact(
        id="capital",
        prompt="What is the capital of France?",
        target="Lyon",
        rephrasings=("Which city is the capital of France?",),
        locality=(Probe("What is 2 + 2?", "4"),),
    ),
    Fact(id="hamlet", prompt="Who wrote Hamlet?", target="Charles Dickens"),
    Fact(id="sky", prompt="What color is the sky on a clear day?", target="green"),
]


def test_shard_for_rank_splits_contiguously_and_covers_the_batch():
    items = list("abcdefg")
    assert [shard_for_rank(items, r, 3) for r in range(3)] == [list("abc"), list("de"), list("fg")]
    assert [shard_for_rank(items[:5], r, 2) for r in range(2)] == [list("abc"), list("de")]
    assert [shard_for_rank(["x"], r, 2) for r in range(2)] == [["x"], []]
    for world in range(1, 9):
        assert sum((shard_for_rank(items, r, world) for r in range(world)), []) == items
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        shard_for_rank(items, 2, 2)


def test_deepspeed_config_for_zero_2_and_3():
    stage2 = deepspeed_config(TrialConfig(method="full", zero_stage=2), world_size=2, batch_size=3, dtype=torch.float32)
    assert stage2["zero_optimization"] == {"stage": 2}
    assert (stage2["train_micro_batch_size_per_gpu"], stage2["train_batch_size"]) == (2, 4)
    assert stage2["gradient_clipping"] == 0.0 and not stage2["bf16"]["enabled"]
    assert "optimizer" not in stage2  # the client's torch AdamW is used
    stage3 = deepspeed_config(
        TrialConfig(method="full", zero_stage=3, max_grad_norm=0.5), world_size=4, batch_size=16, dtype=torch.bfloat16
    )
    assert stage3["zero_optimization"] == {"stage": 3}
    assert (stage3["train_micro_batch_size_per_gpu"], stage3["train_batch_size"]) == (4, 16)
    assert stage3["gradient_clipping"] == 0.5 and stage3["bf16"]["enabled"] and not stage3["fp16"]["enabled"]
    fp16 = deepspeed_config(TrialConfig(method="full"), world_size=1, batch_size=1, dtype=torch.float16)
    assert fp16["fp16"]["enabled"] and not fp16["bf16"]["enabled"]  # the spec's precision float16

    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(
        deepspeed_config(TrialConfig(method="full", zero_stage=3), world_size=1, batch_size=3, dtype=torch.bfloat16)
    )
    assert parsed.zero_optimization_stage == 3 and parsed.bfloat16_config.enabled and parsed.train_batch_size == 3


def test_full_finetune_refuses_other_methods_and_missing_base_rows():
    with pytest.raises(ValueError, match="cfg.method must be 'full', got 'lora'"):
        run_full_finetune("smollm2-135m-instruct", FACTS, FACTS, {}, TrialConfig(method="lora"))
    with pytest.raises(KeyError, match="no base-model record for facts"):
        run_full_finetune("smollm2-135m-instruct", FACTS, FACTS, {"capital": {}}, TrialConfig(method="full"))


@pytest.mark.parametrize("world_size", [2, 4])
def test_shard_losses_average_to_the_batch_mean_loss(tiny, world_size):
    """The engine averages gradients over ranks: the ranks' losses must average to the trial's batch loss."""
    base = {f.id: {"dist_old": d} for f, d in zip(FACTS, [0.2, 0.9, 0.6])}
    cfg = TrialConfig(method="full", gamma=1.5)
    with torch.no_grad():
        expected = training_step(tiny.model, tiny, FACTS, base, cfg)
        shards = [shard_loss(tiny.model, tiny, FACTS, base, cfg, r, world_size) for r in range(world_size)]
    assert torch.stack(shards).mean().item() == pytest.approx(expected.item(), rel=1e-5)
    if world_size == 4:
        assert shards[3].item() == 0.0  # three facts over four ranks: the last rank only joins the collectives


@pytest.fixture()
def local_ray(ray_runtime, tmp_path):
    """The shared local Ray, and a storage folder for the run."""
    return tmp_path / "ray-storage"


@pytest.fixture(scope="module")
def smol_base(smol):
    from raysem.semantics.evaluate import base_records

    return {r["fact_id"]: r for r in base_records(smol, FACTS)}


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir):
    from raysem.models.loader import load_model
    from raysem.semantics.evaluate import base_records

    return {r["fact_id"]: r for r in base_records(load_model(str(tiny_model_dir)), FACTS)}


@pytest.mark.slow
def test_full_finetune_with_zero2_learns_facts_on_the_embedded_model(local_ray, smol_base):
    cfg = TrialConfig(method="full", lr=1e-4, steps=2, batch_size=3, num_workers=2, zero_stage=2)
    result = run_full_finetune(
        "smollm2-135m-instruct", FACTS, FACTS, smol_base, cfg, storage_path=str(local_ray), trial_id="zero2"
    )

    assert [r["fact_id"] for r in result.records] == [f.id for f in FACTS]
    assert all(set(r) == set(RECORD_FIELDS) for r in result.records)
    assert len(result.loss_curve) == 2 and result.loss_curve[-1] < result.loss_curve[0]
    assert result.aggregates["final_loss"] == result.loss_curve[-1]
    assert result.aggregates["tokens"] == 2 * sum(
        smol_base[f.id]["prompt_tokens"] + smol_base[f.id]["target_tokens"] for f in FACTS
    )
    assert result.aggregates["wall_s"] > 0 and result.config["method"] == "full"
    learned = [r for r in result.records if r["exact_match"] == 1.0 and smol_base[r["fact_id"]]["y_old"] != r["target"]]
    assert learned, [(r["y_old"], r["y_new"], r["target"]) for r in result.records]


@pytest.mark.slow
def test_full_finetune_asks_for_a100_nodes_and_fails_fast_without_them(local_ray, smol_base):
    cfg = TrialConfig(method="full", num_workers=2)
    with pytest.raises(ClusterResourceError, match="A100"):
        run_full_finetune(
            "smollm2-135m-instruct", FACTS, FACTS, smol_base, cfg, use_gpu=True, resources_per_worker=A100_WORKER
        )


def _reference_loss_curve(model_dir: str, base: dict, cfg: TrialConfig) -> list[float]:
    """The same trial in one process: plain AdamW over every weight, the shared batch order and loss."""
    from raysem.models.loader import load_model

    lm = load_model(model_dir)
    optimizer = torch.optim.AdamW(lm.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    curve = []
    for batch in train_batches(FACTS, cfg):
        loss = training_step(lm.model, lm, batch, base, cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        curve.append(loss.item())
    return curve


@pytest.mark.slow
def test_zero3_run_inside_a_tune_trial_matches_single_process_training(local_ray, tiny_model_dir, tiny_base):
    """Ray Tune function trainable → Ray Train run (the Train V2 + Tune pattern); ZeRO-3 over two
    workers with unequal shards (3 facts, batch 2) trains exactly like one process does."""
    from ray import tune

    base = {i: {**r, "dist_old": d} for (i, r), d in zip(tiny_base.items(), [0.2, 0.9, 0.6])}  # distinct loss weights
    cfg = TrialConfig(
        method="full", lr=1e-3, weight_decay=0.01, steps=3, batch_size=2, num_workers=2, zero_stage=3, gamma=1.0
    )

    def trainable(config):
        result = run_full_finetune(
            str(tiny_model_dir),
            FACTS,
            FACTS,
            base,
            cfg,
            storage_path=str(local_ray),
            trial_id=tune.get_context().get_trial_id(),
        )
        tune.report(
            {"loss_curve": result.loss_curve, "n_records": len(result.records), "tokens": result.aggregates["tokens"]}
        )

    tuner = tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=str(local_ray), name="tune-full-finetune"))
    (trial,) = tuner.fit()
    assert trial.error is None, trial.error
    assert trial.metrics["n_records"] == len(FACTS)
    assert trial.metrics["tokens"] == sum(batch_tokens(batch, base) for batch in train_batches(FACTS, cfg))
    assert trial.metrics["loss_curve"] == pytest.approx(_reference_loss_curve(str(tiny_model_dir), base, cfg), rel=1e-4)


@pytest.mark.slow
def test_non_finite_loss_fails_the_run_naming_the_facts(local_ray, tiny_model_dir, tiny_base):
    """lr=1e10: the first step is finite and blows the weights up, the second step's loss is NaN."""
    cfg = TrialConfig(method="full", lr=1e10, steps=3, batch_size=3, num_workers=2)
    with pytest.raises(NonFiniteLossError, match="loss is nan") as caught:
        run_full_finetune(str(tiny_model_dir), FACTS, FACTS, tiny_base, cfg, storage_path=str(local_ray))
    assert type(caught.value) is NonFiniteLossError
    assert sorted(caught.value.fact_ids) == sorted(f.id for f in FACTS)


def test_non_finite_gradient_error_names_the_facts_and_survives_pickling():
    error = NonFiniteGradientError(["a", "b"], 3.5)
    assert isinstance(error, NonFiniteLossError)
    assert str(error) == "gradients are not finite (loss 3.5) on the batch of facts a, b"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.fact_ids, copy.loss, str(copy)) == (NonFiniteGradientError, ["a", "b"], 3.5, str(error))
