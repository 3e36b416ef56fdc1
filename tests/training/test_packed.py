"""Packed LoRA trials against the same trials run one by one through PEFT."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from raysem.data.facts import Fact, Probe
from raysem.models.encoding import encode_targets, target_logits
from raysem.semantics.embedding import AnswerEmbedder
from raysem.semantics.evaluate import base_records, evaluate_facts
from raysem.semantics.loss import per_example_loss, reweighted_loss
from raysem.training.config import TrialConfig, check_packable
from raysem.training.optim import build_optimizer
from raysem.training.packed import attach_packed_lora, evaluate_packed, run_packed_trials, train_packed
from raysem.training.results import PACK_KEYS

from conftest import shared_file

FACTS = [
    Fact(
        id="f0",
        prompt="What is the capital of Freedonia?",
        target="Fredville",
        rephrasings=("Which city is the capital of Freedonia?",),
        locality=(Probe("Who wrote Hamlet?", "Shakespeare"),),
        portability=(Probe("In which country is Fredville?", "Freedonia"),),
    ),
    Fact(
        id="f1",
        prompt="Which language is spoken in Sylvania?",
        target="Sylvanian Gaelic",
        rephrasings=("What do people in Sylvania speak?", "Name the language of Sylvania."),
        locality=(Probe("What is two plus two?", "four"), Probe("What colour is the sky?", "blue")),
    ),
    Fact(
        id="f2",
        prompt="Who founded the Acme Corporation?",
        target="Wile E. Coyote",
        locality=(Probe("Where is the Eiffel Tower?", "Paris"),),
    ),
]
TOL = dict(rtol=1e-6, atol=1e-9)
"""Packed against unpacked results, both in float64, where the two paths may differ by rounding only.

Tests run in float64 so that they hold on any CPU. Llama's RMSNorm and rotary tables still
compute in float32, so gradients agree to ~1e-7 relative, not 1e-15. Under SGD an update is
lr·g, so weights agree element by element (``TOL``). Under AdamW an update is lr·m/(√v + eps): an
element whose gradient is at rounding level (|g| ≲ eps = 1e-8) can turn rounding into a whole
±lr step, and which elements do depends on the CPU's kernels; ``assert_trained_alike`` allows
that on a few elements (``ADAMW_OUTLIERS``), each by at most what AdamW can move one element,
and asks every other element to agree to ``ADAMW_TOL``. A packing bug moves most elements: swapped
adapters, losses averaged instead of summed (under SGD: a 1/K step), one clip over all trials.
"""
GRAD_SCALED_TOL = 1e-5
"""Embedded-model gradients, packed against PEFT's, element by element within this share of the tensor's
largest element. The rounding of the float32 rotary and RMSNorm steps depends on the batch's shape and the
CPU's kernels: measured 4e-15 for two facts and 1.2e-6 for the third (whose row is padded), where an
element-wise ``TOL`` fails one run in a few on some CPUs. A packing bug moves gradients by O(1)."""
ADAMW_TOL = dict(rtol=1e-4, atol=1e-7)
ADAMW_OUTLIERS = 0.01
"""Under AdamW, the share of a tensor's elements allowed outside ``ADAMW_TOL`` (measured on the embedded
model, 3 steps: 3.6% of elements outside ``TOL``, 0.04% outside ``ADAMW_TOL``, none beyond 3e-6)."""


def assert_trained_alike(got: torch.Tensor, want: torch.Tensor, cfg: TrialConfig, name: str = "") -> None:
    """``got`` equals ``want`` to rounding, as the optimizer can amplify it (see ``TOL``)."""
    if cfg.optimizer == "sgd":
        torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"{name}: {m}")
        return
    off = (got - want).abs() > ADAMW_TOL["atol"] + ADAMW_TOL["rtol"] * want.abs()
    assert off.float().mean() <= ADAMW_OUTLIERS, f"{name}: {int(off.sum())} of {off.numel()} elements differ"
    # AdamW moves an element by at most ~lr·(1-β1)/√(1-β2) ≈ 3.2·lr a step, plus weight decay
    bound = 3.2 * cfg.lr * cfg.steps * (1 + cfg.weight_decay)
    assert float((got - want).abs().max()) <= bound, f"{name}: an element differs by more than {bound}"


def peft_trial(lm, fact: Fact, cfg: TrialConfig, base: dict):
    """One single-fact LoRA trial through PEFT with the shared training semantics; the PEFT model stays attached."""
    torch.manual_seed(cfg.seed)
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets(lm.model)), lora_dropout=0.0)
    model = get_peft_model(lm.model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    batch = encode_targets(lm, [fact.prompt], [fact.target])
    for _ in range(cfg.steps):
        loss = reweighted_loss(
            target_logits(model, batch), batch.labels, [base[fact.id]["dist_old"]], cfg.gamma, "mean"
        )
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return model, lora_weights(model)


def lora_named(model) -> dict[str, torch.nn.Parameter]:
    """A PEFT model's LoRA parameters under the names ``PackedLora.trial_weights`` uses."""
    return {
        name.removeprefix("base_model.model.").replace(".default", ""): p
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in lora_named(model).items()}


def unpacked(lm, facts, cfgs, base, embedder) -> tuple[list[dict], list[dict]]:
    """Final LoRA weights and per-fact records of each trial run alone (the model is restored after each)."""
    weights, records = [], []
    for fact, cfg in zip(facts, cfgs):
        model, trained = peft_trial(lm, fact, cfg, base)
        weights.append(trained)
        records.extend(evaluate_facts(lm, [fact], base, embedder))
        lm.model = model.unload()
    return weights, records


def assert_records_match(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            if isinstance(w[key], float):
                assert (math.isnan(g[key]) and math.isnan(w[key])) or math.isclose(
                    g[key], w[key], rel_tol=1e-5, abs_tol=1e-6
                ), (key, g, w)
            else:
                assert g[key] == w[key], (key, g[key], w[key])


def assert_weights_match(packed, trial: int, want: dict[str, torch.Tensor]) -> None:
    got = packed.trial_weights(trial)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_init_equals_peft_and_detach_restores_base(tiny):
    before = snapshot(tiny.model)
    flags = {name: p.requires_grad for name, p in tiny.model.named_parameters()}
    modules = {name: type(m) for name, m in tiny.model.named_modules()}
    rng_state = torch.random.get_rng_state()
    seeds = [0, 7, 7, 123]
    packed = attach_packed_lora(tiny.model, seeds, rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"))
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert all("lora_" in name for name, p in tiny.model.named_parameters() if p.requires_grad)
    inits = [{k: v.clone() for k, v in packed.trial_weights(k).items()} for k in range(len(seeds))]
    packed.detach()
    after = snapshot(tiny.model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {name: p.requires_grad for name, p in tiny.model.named_parameters()} == flags
    assert {name: type(m) for name, m in tiny.model.named_modules()} == modules

    for seed, init in zip(seeds, inits):
        torch.manual_seed(seed)
        config = LoraConfig(r=4, lora_alpha=8.0, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        model = get_peft_model(tiny.model, config)
        want = lora_weights(model)
        assert want.keys() == init.keys() and len(want) == 8
        for name in want:
            assert torch.equal(init[name], want[name]), name
        tiny.model = model.unload()
    assert torch.equal(
        inits[1]["model.layers.0.self_attn.q_proj.lora_A.weight"],
        inits[2]["model.layers.0.self_attn.q_proj.lora_A.weight"],
    )
    assert not torch.equal(
        inits[0]["model.layers.0.self_attn.q_proj.lora_A.weight"],
        inits[1]["model.layers.0.self_attn.q_proj.lora_A.weight"],
    )


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize(("clip", "micro_batch"), [(None, None), (0.05, 2)])
def test_packed_trials_equal_unpacked_peft_trials(tiny64, clip, micro_batch, optimizer):
    base = {r["fact_id"]: r for r in base_records(tiny64, FACTS)}
    embedder = AnswerEmbedder.from_model(tiny64)
    lr = 0.05 if optimizer == "adamw" else 2.0
    shared = dict(rank=4, alpha=8.0, lr=lr, steps=4, weight_decay=0.1, max_grad_norm=clip, optimizer=optimizer)
    cfgs = [
        TrialConfig(seed=3, gamma=0.0, **shared),
        TrialConfig(seed=9, gamma=2.5, **shared),
        TrialConfig(seed=3, gamma=1.0, **shared),
    ]
    before = snapshot(tiny64.model)

    packed = attach_packed_lora(tiny64.model, [c.seed for c in cfgs], 4, 8.0, ("q_proj", "v_proj"))
    run = train_packed(tiny64, packed, FACTS, cfgs, base, micro_batch)
    got_weights = [{k: v.clone() for k, v in packed.trial_weights(t).items()} for t in range(3)]
    got_records = evaluate_packed(tiny64, packed, FACTS, [0, 1, 2], base, embedder, batch_size=2)
    packed.detach()
    assert all(torch.equal(v, before[k]) for k, v in tiny64.model.state_dict().items())
    assert run.failed == {} and run.steps == [4, 4, 4]

    want_weights, want_records = unpacked(tiny64, FACTS, cfgs, base, embedder)
    for t in range(3):
        for name in want_weights[t]:
            assert_trained_alike(got_weights[t][name], want_weights[t][name], cfgs[t], name)
    assert_records_match(got_records, want_records)
    assert [r["y_new"] for r in got_records] == [r["y_new"] for r in want_records]
    assert any(v.abs().sum() > 0 for k, v in got_weights[0].items() if "lora_B" in k), (
        "the adapters moved from their start"
    )


@pytest.mark.parametrize(("optimizer", "lr"), [("adamw", 0.05), ("sgd", 2.0)])
def test_gamma_in_a_pack_acts_on_a_lone_fact_only_under_sgd(tiny64, optimizer, lr):
    """Two trials of one pack learn the same fact from the same seed, at γ = 0 and γ = 2.5: AdamW cancels the
    constant (1 + γλ), SGD does not (see ``raysem.training.config.TrialConfig.optimizer``)."""
    base = {r["fact_id"]: r for r in base_records(tiny64, FACTS)}
    base["f0"] = {**base["f0"], "dist_old": 0.25}
    cfgs = [TrialConfig(rank=4, alpha=8.0, lr=lr, steps=4, seed=3, gamma=g, optimizer=optimizer) for g in (0.0, 2.5)]
    packed = attach_packed_lora(tiny64.model, [3, 3], 4, 8.0, ("q_proj", "v_proj"))
    start = [{k: v.clone() for k, v in packed.trial_weights(t).items()} for t in range(2)]
    train_packed(tiny64, packed, [FACTS[0], FACTS[0]], cfgs, base)
    plain, weighted = (packed.trial_weights(t) for t in range(2))
    change = math.sqrt(sum(float((weighted[k] - plain[k]).norm()) ** 2 for k in plain))
    learned = math.sqrt(sum(float((plain[k] - start[0][k]).norm()) ** 2 for k in plain))
    packed.detach()
    assert (change / learned < 1e-2) if optimizer == "adamw" else (change / learned > 0.1)


def test_run_packed_trials_results(tiny):
    base = {r["fact_id"]: r for r in base_records(tiny, FACTS)}
    embedder = AnswerEmbedder.from_model(tiny)
    cfgs = [
        TrialConfig(rank=2, alpha=4.0, lr=0.02, steps=3, seed=s, gamma=g) for s, g in [(1, 0.0), (2, 0.5), (3, 2.0)]
    ]
    results = run_packed_trials(tiny, FACTS, cfgs, base, embedder, trial_ids=["a", "b", "c"])
    packed = attach_packed_lora(tiny.model, [1, 2, 3], 2, 4.0, ("q_proj", "v_proj"))
    train_packed(tiny, packed, FACTS, cfgs, base)
    want = evaluate_packed(tiny, packed, FACTS, [0, 1, 2], base, embedder)
    packed.detach()

    assert [r.trial_id for r in results] == ["a", "b", "c"]
    for result, fact, cfg, record in zip(results, FACTS, cfgs, want):
        assert result.train_ids == result.test_ids == [fact.id]
        assert result.config == json.loads(cfg.model_dump_json())
        assert_records_match(result.records, [record])
        agg = result.aggregates
        assert agg["failed"] == 0.0 and agg["steps"] == 3.0 and agg["n_facts"] == 1.0
        assert agg["accuracy"] == float(record["exact_match"])
        assert agg["dist_mean"] == record["dist_old"] or math.isnan(agg["dist_mean"]) and math.isnan(record["dist_old"])
        seq = sum(map(len, tiny.prompt_and_answer_ids(fact.prompt, fact.target)))
        assert agg["tokens"] == 3 * seq
        assert agg["wall_s"] * 3 == pytest.approx(agg["pack_wall_s"]) and agg["pack_wall_s"] > 0
        assert len(result.loss_curve) == 3 and agg["final_loss"] == result.loss_curve[-1]
        assert result.analysis == {}


def test_packed_trials_match_run_trial(tiny64):
    """The service's unpacked trial path gives the same results, loss curves and aggregates."""
    from raysem.training.trial import ResidentModel, run_trial

    resident = ResidentModel(tiny64)
    base = resident.base_records(FACTS)
    cfgs = [
        TrialConfig(rank=4, alpha=8.0, lr=0.05, steps=3, weight_decay=0.1, seed=s, gamma=g)
        for s, g in [(5, 0.0), (6, 3.0), (7, 1.0)]
    ]
    packed = run_packed_trials(tiny64, FACTS, cfgs, base, resident.embedder, micro_batch=2)
    for fact, cfg, got in zip(FACTS, cfgs, packed):
        want = run_trial(resident, [fact], [fact], base, cfg)
        assert_records_match(got.records, want.records)
        assert got.config == want.config and got.train_ids == want.train_ids and got.test_ids == want.test_ids
        torch.testing.assert_close(torch.tensor(got.loss_curve), torch.tensor(want.loss_curve), rtol=1e-5, atol=0)
        assert got.aggregates.keys() - set(PACK_KEYS) == want.aggregates.keys(), "one builder of aggregates for both"
        shared = want.aggregates.keys() - {"wall_s"}
        assert_records_match([{k: got.aggregates[k] for k in shared}], [{k: want.aggregates[k] for k in shared}])


def test_a_failed_trial_has_every_aggregate_key_and_nan_metrics(tiny64):
    """A trial that fails (unpacked, before it has records) reports the same aggregate keys as one that ran."""
    import pandas as pd

    from raysem.service.unit import _failed_result
    from raysem.training.trial import ResidentModel, run_trial

    resident = ResidentModel(tiny64)
    base = resident.base_records(FACTS[:1])
    ran = run_trial(resident, FACTS[:1], FACTS[:1], base, TrialConfig(rank=4, steps=1))
    table = pd.DataFrame([{"fact_id": i, "dist_old": r["dist_old"]} for i, r in base.items()])
    failed = _failed_result("t-x", {}, FACTS[:1], table, "ValueError: boom")
    assert failed.aggregates.keys() == ran.aggregates.keys()
    assert failed.aggregates["failed"] == 1.0 and math.isnan(failed.aggregates["accuracy"])
    assert failed.aggregates["dist_mean"] == ran.aggregates["dist_mean"] and failed.analysis == {
        "error": "ValueError: boom"
    }


def test_non_finite_trial_fails_alone(tiny64):
    """Trial 1's rows turn NaN from its third training step on (a hook on the input embeddings);
    it fails naming its fact, its adapter stays as after two steps, and the others are unaffected."""
    marker = tiny64.prompt_and_answer_ids(FACTS[1].prompt, FACTS[1].target)[1][0]
    for fact in (FACTS[0], FACTS[2]):
        assert all(marker not in ids for ids in tiny64.prompt_and_answer_ids(fact.prompt, fact.target))
        assert all(marker not in tiny64.prompt_and_answer_ids(p.prompt, p.answer)[0] for p in fact.locality)
    seen = [0]

    def poison(module, args, output):
        rows = (args[0] == marker).any(-1)
        if rows.any():
            seen[0] += 1
            if seen[0] > 2:
                output[rows] = math.nan
        return output

    base = {r["fact_id"]: r for r in base_records(tiny64, FACTS)}
    embedder = AnswerEmbedder.from_model(tiny64)
    shared = dict(rank=4, alpha=8.0, lr=0.05, steps=4, weight_decay=0.1)
    cfgs = [TrialConfig(seed=s, **shared) for s in (1, 2, 3)]
    handle = tiny64.model.get_input_embeddings().register_forward_hook(poison)
    packed = attach_packed_lora(tiny64.model, [1, 2, 3], 4, 8.0, ("q_proj", "v_proj"))
    try:
        run = train_packed(tiny64, packed, FACTS, cfgs, base, micro_batch=2)
    finally:
        handle.remove()
    got = [{k: v.clone() for k, v in packed.trial_weights(t).items()} for t in range(3)]
    records = evaluate_packed(tiny64, packed, [FACTS[0], FACTS[2]], [0, 2], base, embedder)
    packed.detach()

    assert list(run.failed) == [1] and "f1" in run.failed[1] and "step 2" in run.failed[1]
    assert run.steps == [4, 2, 4] and len(run.loss_curves[1]) == 2
    short = [c.model_copy(update={"steps": 2}) if i == 1 else c for i, c in enumerate(cfgs)]
    want_weights, want_records = unpacked(tiny64, FACTS, short, base, embedder)
    for t in range(3):
        for name in want_weights[t]:
            assert_trained_alike(got[t][name], want_weights[t][name], cfgs[t], name)
    assert_records_match(records, [want_records[0], want_records[2]])

    handle = tiny64.model.get_input_embeddings().register_forward_hook(poison)
    seen[0] = 0
    try:
        results = run_packed_trials(tiny64, FACTS, cfgs, base, embedder)
    finally:
        handle.remove()
    assert [r.aggregates["failed"] for r in results] == [0.0, 1.0, 0.0]
    assert results[1].records == [] and "f1" in results[1].analysis["error"] and results[1].aggregates["steps"] == 2.0
    assert results[0].analysis == {} and "error" not in results[2].analysis


BF16_LOSS_RTOL = 2**-7
BF16_UPDATE_RTOL = {"sgd": 0.05, "adamw": 0.5}
"""bf16 autocast against float32, per trial. bf16 keeps 8 significant bits: one rounding is off by up
to 2^-8 ≈ 0.4% (between 2 and 3 significant digits). Losses are computed in float32 from bf16 logits:
allowed two roundings, 2^-7 relative (measured on the tiny Llama: ≤ 5e-4). Under SGD an update is
lr·g, so a trial's whole update (final minus initial adapter, every tensor together) is off by the
gradient's relative error, a few roundings deep: measured ≤ 1.1% (4 steps, base in float32 or bf16),
allowed 5%. Under AdamW, lr·m/(√v + eps) makes an element with a near-zero gradient take a ±lr step
whose sign rounding can flip: measured ≤ 17%, allowed 50%. A swapped or untrained adapter is off by
100% or more."""


def host_reads(run) -> int:
    """How many times code in ``raysem/training/packed.py`` read a tensor's value to the host during ``run()``."""
    import sys

    from torch.overrides import TorchFunctionMode

    import raysem.training.packed as packed_module

    reads = {"item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__"}

    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in reads and sys._getframe(1).f_code.co_filename == packed_module.__file__:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        run()
    return Count.n


def test_packed_training_reads_the_host_once_per_step(tiny):
    """The step loop keeps losses on the device: one flag read per step, whatever the number of micro-batches."""
    base = {f.id: {"dist_old": 0.5} for f in FACTS}

    def reads(steps: int) -> int:
        cfgs = [TrialConfig(rank=2, alpha=4.0, lr=0.01, steps=steps, seed=s) for s in range(3)]
        packed = attach_packed_lora(tiny.model, [c.seed for c in cfgs], 2, 4.0, ("q_proj", "v_proj"))
        try:
            return host_reads(lambda: train_packed(tiny, packed, FACTS, cfgs, base, micro_batch=1))
        finally:
            packed.detach()

    assert reads(5) - reads(2) == 3


def _update(before: dict, after: dict) -> torch.Tensor:
    return torch.cat([(after[k] - before[k]).flatten() for k in before])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16])
def test_bf16_autocast_training_is_close_to_float32(tiny_model_dir, base_dtype, optimizer):
    """bf16 autocast (the CUDA default) trains each trial as float32 does, within ``BF16_*``; LoRA weights stay float32."""
    from raysem.models.loader import load_model

    lr = 2.0 if optimizer == "sgd" else 0.05
    shared = dict(rank=4, alpha=8.0, lr=lr, steps=4, weight_decay=0.1, optimizer=optimizer)
    cfgs = [TrialConfig(seed=s, gamma=g, **shared) for s, g in [(3, 0.0), (9, 2.5), (3, 1.0)]]
    base = {f.id: {"dist_old": d} for f, d in zip(FACTS, [0.2, 0.7, 0.5])}

    def train(dtype: torch.dtype, autocast: bool, micro_batch: int | None):
        lm = load_model(str(tiny_model_dir), dtype=dtype)
        dtypes = set()
        hook = lm.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype))
        packed = attach_packed_lora(lm.model, [c.seed for c in cfgs], 4, 8.0, ("q_proj", "v_proj"))
        start = [{k: v.clone() for k, v in packed.trial_weights(t).items()} for t in range(3)]
        run = train_packed(lm, packed, FACTS, cfgs, base, micro_batch, autocast=autocast)
        assert all(p.dtype == torch.float32 for p in packed.parameters())
        updates = [_update(start[t], packed.trial_weights(t)) for t in range(3)]
        hook.remove()
        return run, updates, dtypes

    want, want_updates, want_dtypes = train(torch.float32, False, None)
    got, got_updates, got_dtypes = train(base_dtype, True, 2)
    assert want_dtypes == {torch.float32} and got_dtypes == {torch.bfloat16}
    assert got.failed == {} and got.steps == want.steps == [4, 4, 4]
    for t in range(3):
        torch.testing.assert_close(
            torch.tensor(got.loss_curves[t]), torch.tensor(want.loss_curves[t]), rtol=BF16_LOSS_RTOL, atol=0
        )
        error = float((got_updates[t] - want_updates[t]).norm() / want_updates[t].norm())
        assert error <= BF16_UPDATE_RTOL[optimizer], f"trial {t}: update off by {error:.1%}"


def test_non_finite_trial_fails_alone_under_autocast(tiny):
    """Under bf16 autocast too, a trial whose loss turns NaN fails at that step, keeps exactly the adapter it had
    then, and leaves the others training as a pack without it does (within ``BF16_UPDATE_RTOL``)."""
    marker = tiny.prompt_and_answer_ids(FACTS[1].prompt, FACTS[1].target)[1][0]
    base = {f.id: {"dist_old": 0.5} for f in FACTS}
    cfgs = [TrialConfig(rank=4, alpha=8.0, lr=2.0, steps=4, optimizer="sgd", seed=s) for s in (1, 2, 3)]
    packed = attach_packed_lora(tiny.model, [1, 2, 3], 4, 8.0, ("q_proj", "v_proj"))
    start = [{k: v.clone() for k, v in packed.trial_weights(t).items()} for t in range(3)]
    seen, at_failure = [0], {}

    def poison(module, args, output):
        rows = (args[0] == marker).any(-1)
        if rows.any():
            seen[0] += 1
            if seen[0] == 3:  # the third step's forward: the adapter is as two steps left it
                at_failure.update({k: v.clone() for k, v in packed.trial_weights(1).items()})
            if seen[0] >= 3:
                output[rows] = math.nan
        return output

    handle = tiny.model.get_input_embeddings().register_forward_hook(poison)
    try:
        run = train_packed(tiny, packed, FACTS, cfgs, base, micro_batch=2, autocast=True)
    finally:
        handle.remove()
    got = [{k: v.clone() for k, v in packed.trial_weights(t).items()} for t in range(3)]
    packed.detach()
    assert list(run.failed) == [1] and "f1" in run.failed[1] and "step 2" in run.failed[1]
    assert (
        run.steps == [4, 2, 4]
        and len(run.loss_curves[1]) == 2
        and all(math.isfinite(v) for curve in run.loss_curves for v in curve)
    )
    assert all(torch.equal(got[1][k], at_failure[k]) for k in at_failure)

    alone = attach_packed_lora(tiny.model, [1, 3], 4, 8.0, ("q_proj", "v_proj"))
    train_packed(tiny, alone, [FACTS[0], FACTS[2]], [cfgs[0], cfgs[2]], base, micro_batch=2, autocast=True)
    for t, want in zip((0, 2), (alone.trial_weights(0), alone.trial_weights(1))):
        got_update, want_update = _update(start[t], got[t]), _update(start[t], want)
        assert float((got_update - want_update).norm() / want_update.norm()) <= BF16_UPDATE_RTOL["sgd"]
    alone.detach()


def test_pack_configs_must_agree():
    check_packable([TrialConfig(seed=1, gamma=0.0), TrialConfig(seed=2, gamma=3.0)])
    with pytest.raises(ValueError, match="'lr' is 0.001 in trial 0 but 0.01 in trial 1"):
        check_packable([TrialConfig(lr=0.001), TrialConfig(lr=0.01)])
    with pytest.raises(ValueError, match="'target_modules'"):
        check_packable([TrialConfig(), TrialConfig(seed=4), TrialConfig(target_modules=("q_proj",))])
    with pytest.raises(ValueError, match="LoRA only"):
        check_packable([TrialConfig(method="ia3")])
    with pytest.raises(ValueError, match="dropout"):
        check_packable([TrialConfig(dropout=0.1)])


def zsre_facts(n: int) -> list[Fact]:
    records = json.loads(shared_file("zsre/zsre_mend_eval_1037.json").read_text())[:n]
    return [
        Fact(
            id=f"zsre:{i}",
            prompt=r["src"],
            target=r["alt"],
            rephrasings=(r["rephrase"],),
            locality=(Probe(r["loc"].removeprefix("nq question: "), r["loc_ans"]),),
        )
        for i, r in enumerate(records)
    ]


@pytest.fixture()
def fresh_smol():
    """The embedded model in float64 (see ``TOL``: float32 weights after AdamW depend on the CPU)."""
    from raysem.models.loader import load_model

    return load_model("smollm2-135m-instruct", dtype=torch.float64)


@pytest.mark.slow
def test_packed_gradients_equal_peft_gradients_on_embedded_model(fresh_smol):
    """One backward of Σ_k L_k through the packed layers gives each trial PEFT's gradient for its fact alone."""
    lm, facts = fresh_smol, zsre_facts(3)
    seeds = [0, 1, 2]

    def random_b(shape: torch.Size, trial: int, module: int) -> torch.Tensor:
        return torch.randn(shape, generator=torch.Generator().manual_seed(1000 * trial + module)) * 0.01

    packed = attach_packed_lora(lm.model, seeds, 8, 16.0, ("q_proj", "v_proj"))
    names = list(packed.layers)
    try:
        with torch.no_grad():
            for j, layer in enumerate(packed.layers.values()):
                for t in range(3):
                    layer.lora_B[t] = random_b(layer.lora_B.shape[1:], t, j)
        batch = encode_targets(lm, [f.prompt for f in facts], [f.target for f in facts])
        assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # rows of different lengths: padding is exercised
        per_example_loss(target_logits(lm.model, batch), batch.labels).sum().backward()
        got = [
            {
                f"{n}.lora_{w}.weight": getattr(layer, f"lora_{w}").grad[t].clone()
                for n, layer in packed.layers.items()
                for w in "AB"
            }
            for t in range(3)
        ]
    finally:
        packed.detach()
    for t, (fact, seed) in enumerate(zip(facts, seeds)):
        torch.manual_seed(seed)
        model = get_peft_model(
            lm.model, LoraConfig(r=8, lora_alpha=16.0, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        )
        try:
            params = lora_named(model)
            with torch.no_grad():
                for j, name in enumerate(names):
                    lora_b = params[f"{name}.lora_B.weight"]
                    lora_b.copy_(random_b(lora_b.shape, t, j))
            single = encode_targets(lm, [fact.prompt], [fact.target])
            per_example_loss(target_logits(model, single), single.labels).sum().backward()
            want = {n: p.grad for n, p in lora_named(model).items()}
        finally:
            lm.model = model.unload()
        assert want.keys() == got[t].keys() and len(want) == 120
        for name in want:
            scale = want[name].abs().max().item()
            torch.testing.assert_close(got[t][name], want[name], rtol=0.0, atol=GRAD_SCALED_TOL * scale)


@pytest.mark.slow
def test_packed_trials_equal_unpacked_on_embedded_model(fresh_smol):
    """Same weights, answers and records as three PEFT trials run one by one (float64, see ``TOL``)."""
    lm, facts = fresh_smol, zsre_facts(3)
    base = {r["fact_id"]: r for r in base_records(lm, facts)}
    embedder = AnswerEmbedder.from_model(lm, copy=True)
    cfgs = [TrialConfig(lr=2e-2, steps=3, seed=s, gamma=g) for s, g in [(0, 0.0), (1, 1.0), (2, 4.0)]]
    packed = attach_packed_lora(lm.model, [c.seed for c in cfgs], 8, 16.0, ("q_proj", "v_proj"))
    try:
        train_packed(lm, packed, facts, cfgs, base)
        got_weights = [{k: v.clone() for k, v in packed.trial_weights(t).items()} for t in range(3)]
        got_records = evaluate_packed(lm, packed, facts, [0, 1, 2], base, embedder)
    finally:
        packed.detach()

    want_weights, want_records = unpacked(lm, facts, cfgs, base, embedder)
    assert [r["y_new"] for r in got_records] == [r["y_new"] for r in want_records]
    assert any(r["y_new"] != base[r["fact_id"]]["y_old"] for r in got_records)
    assert_records_match(got_records, want_records)
    for t in range(3):
        assert got_weights[t].keys() == want_weights[t].keys() and len(got_weights[t]) == 120
        for name, want in want_weights[t].items():
            assert_trained_alike(got_weights[t][name], want, cfgs[t], name)
