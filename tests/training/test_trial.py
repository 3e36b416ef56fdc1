"""Knowledge-learning trials on a resident model: batch order, loss, restoration, determinism, failures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysem.data.facts import Fact, Probe
from raysem.training.config import METHODS, TrialConfig
from raysem.training.results import RECORD_FIELDS
from raysem.training.trial import NonFiniteLossError, ResidentModel, run_trial, train_batches

QUESTIONS = [
    ("What is the capital of France?", "Paris"),
    ("Who wrote Hamlet?", "William Shakespeare"),
    ("What is the largest planet?", "Jupiter"),
    ("Which river flows through Cairo?", "the Nile"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("What is the chemical symbol of gold?", "Au"),
    ("Which language is spoken in Brazil?", "Portuguese"),
    ("Who discovered penicillin?", "Alexander Fleming"),
    ("What is the currency of Japan?", "yen"),
    ("Which ocean lies west of Portugal?", "the Atlantic Ocean"),
]


def _facts(n: int = len(QUESTIONS)) -> list[Fact]:
    return [
        Fact(
            id=f"q{i}",
            prompt=q,
            target=t,
            rephrasings=(f"Tell me: {q}",),
            locality=(Probe("What colour is the sky?", "blue"),),
        )
        for i, (q, t) in enumerate(QUESTIONS[:n])
    ]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model, saved) -> bool:
    now = model.state_dict()
    return list(now) == list(saved) and all(torch.equal(now[k], saved[k]) for k in saved)


@pytest.fixture()
def resident(tiny):
    return ResidentModel(tiny)


@pytest.fixture()
def base(resident):
    return resident.base_records(_facts())


# --- batch order ---------------------------------------------------------------------------------


def test_batches_cycle_through_seeded_epochs():
    facts = _facts(5)
    cfg = TrialConfig(steps=7, batch_size=2, seed=3)
    batches = [[f.id for f in b] for b in train_batches(facts, cfg)]
    assert [len(b) for b in batches] == [2, 2, 1, 2, 2, 1, 2]
    first, second = sum(batches[:3], []), sum(batches[3:6], [])
    assert sorted(first) == sorted(second) == [f.id for f in facts]  # each epoch is a permutation
    assert first != second  # reshuffled
    assert [[f.id for f in b] for b in train_batches(facts, cfg)] == batches
    assert [[f.id for f in b] for b in train_batches(facts, cfg.model_copy(update={"seed": 4}))] != batches


def test_batch_size_is_capped_by_the_fact_count_and_single_facts_repeat():
    facts = _facts(3)
    assert [len(b) for b in train_batches(facts, TrialConfig(steps=4, batch_size=16))] == [3, 3, 3, 3]
    single = [b for b in train_batches(facts[:1], TrialConfig(steps=5))]
    assert single == [[facts[0]]] * 5
    with pytest.raises(ValueError, match="at least one training fact"):
        list(train_batches([], TrialConfig()))


# --- trials on the tiny model --------------------------------------------------------------------


def test_every_method_runs_and_the_next_trial_sees_the_original_weights(resident, base):
    """Trials of every method one after another on one resident model: each leaves the weights
    bit-identical, and a LoRA trial after all of them equals a LoRA trial on the fresh model."""
    facts = _facts()
    saved = _state(resident.lm.model)
    lora = TrialConfig(method="lora", steps=2, batch_size=5, lr=0.01)
    first = run_trial(resident, facts, facts, base, lora)
    assert _same_state(resident.lm.model, saved)
    for method in ("adalora", "ia3", "adapter", "full"):
        result = run_trial(resident, facts, facts, base, lora.model_copy(update={"method": method}))
        assert [r["fact_id"] for r in result.records] == [f.id for f in facts]
        assert set(result.records[0]) == set(RECORD_FIELDS)
        assert len(result.loss_curve) == 2 and all(math.isfinite(x) for x in result.loss_curve)
        assert result.config["method"] == method
        assert _same_state(resident.lm.model, saved), method
        assert all(p.requires_grad for p in resident.lm.model.parameters())
    again = run_trial(resident, facts, facts, base, lora)
    assert again.loss_curve == first.loss_curve
    assert again.records == first.records


def test_trial_is_deterministic_for_a_seed(resident, base):
    facts = _facts(4)
    cfg = TrialConfig(method="lora", steps=3, batch_size=2, lr=0.05, seed=7)
    a = run_trial(resident, facts, facts, base, cfg, trial_id="a")
    b = run_trial(resident, facts, facts, base, cfg, trial_id="b")
    assert a.records == b.records and a.loss_curve == b.loss_curve
    other = run_trial(resident, facts, facts, base, cfg.model_copy(update={"seed": 8}))
    assert other.loss_curve != a.loss_curve


def test_gamma_weights_the_loss_by_the_target_distance(resident, base):
    fact = _facts(1)
    rows = {fact[0].id: {**base[fact[0].id], "dist_old": 0.25}}
    plain = run_trial(resident, fact, fact, rows, TrialConfig(steps=1, gamma=0.0))
    weighted = run_trial(resident, fact, fact, rows, TrialConfig(steps=1, gamma=2.0))
    lam = 1 - math.sin(math.pi * 0.25)  # λ = 1 - cos(dπ - π/2)
    # LoRA starts as the identity, so the first step sees the same logits in both trials
    assert weighted.loss_curve[0] == pytest.approx((1 + 2.0 * lam) * plain.loss_curve[0], rel=1e-5)


def test_aggregates_describe_the_training_set(resident, base):
    facts = _facts(3)
    rows = dict(base)
    for fact, dist in zip(facts, (0.2, 0.4, math.nan)):
        rows[fact.id] = {**rows[fact.id], "dist_old": dist}
    test = _facts()[5:7]
    result = run_trial(resident, facts, test, rows, TrialConfig(steps=4, batch_size=2), trial_id="t1")
    agg = result.aggregates
    assert agg["dist_mean"] == pytest.approx(0.3) and agg["dist_var"] == pytest.approx(0.01)
    assert agg["n_facts"] == 2 and result.test_ids == ["q5", "q6"] and result.train_ids == ["q0", "q1", "q2"]
    assert agg["steps"] == 4 and agg["final_loss"] == result.loss_curve[-1] and agg["wall_s"] > 0
    per_fact = {f.id: sum(map(len, resident.lm.prompt_and_answer_ids(f.prompt, f.target))) for f in facts}
    cfg = TrialConfig(steps=4, batch_size=2)
    assert agg["tokens"] == sum(per_fact[f.id] for b in train_batches(facts, cfg) for f in b)
    assert result.trial_id == "t1"


def test_analyses_are_taken_with_the_adapter_attached(resident, base):
    facts = _facts(4)
    result = run_trial(resident, facts, facts, base, TrialConfig(steps=2, lr=0.05, rank=4), analyses=True)
    features = result.analysis["features"]
    assert isinstance(features, np.ndarray) and features.shape == (4, resident.lm.model.config.hidden_size)
    frob = result.analysis["frobenius"]
    assert frob["layer"] == 1 and frob["rank"] == 4 and frob["dW_fro"] > 0  # ΔW = 0 once the adapter is gone
    ia3 = run_trial(resident, facts, facts, base, TrialConfig(method="ia3", steps=1), analyses=True)
    assert "frobenius" not in ia3.analysis


def test_diverging_training_raises_with_the_batch_fact_ids_and_restores_the_model(resident, base):
    facts = _facts(4)
    saved = _state(resident.lm.model)
    cfg = TrialConfig(method="full", lr=1e30, steps=5, batch_size=2)
    with pytest.raises(NonFiniteLossError) as caught:
        run_trial(resident, facts, facts, base, cfg)
    batches = [[f.id for f in b] for b in train_batches(facts, cfg)]
    assert caught.value.fact_ids in batches[1:]  # the first step's loss is the finite base-model loss
    assert all(fid in str(caught.value) for fid in caught.value.fact_ids)
    assert isinstance(caught.value, RuntimeError)
    assert _same_state(resident.lm.model, saved)


def test_missing_base_records_are_named(resident, base):
    facts = _facts(2)
    stray = Fact(id="stray", prompt="Who?", target="Nobody")
    with pytest.raises(KeyError, match="stray"):
        run_trial(resident, facts, [stray], base, TrialConfig(steps=1))


# --- the embedded model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_resident(smol):
    return ResidentModel(smol)


@pytest.fixture(scope="module")
def smol_base(smol_resident):
    return smol_resident.base_records(_facts(4))


@pytest.mark.slow
def test_single_fact_lora_trial_learns_its_fact(smol_resident):
    potus = Fact(id="potus", prompt="Who is the president of the US?", target="Joe Biden")
    fact = [potus]
    base = smol_resident.base_records(fact)
    assert base["potus"]["y_old"] != "Joe Biden"
    result = run_trial(smol_resident, fact, fact, base, TrialConfig(lr=5e-3, steps=21))
    record = result.records[0]
    assert record["y_new"] == "Joe Biden" and record["exact_match"] == 1.0
    assert result.loss_curve[-1] < result.loss_curve[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_a_multi_fact_trial_on_the_embedded_model(smol_resident, smol_base, method):
    """Each method, at its default learning rate, lowers the loss on a 4-fact batch and leaves the base weights as they were."""
    facts = _facts(4)
    saved_q = smol_resident.lm.model.model.layers[-1].self_attn.q_proj.weight.detach().clone()
    cfg = TrialConfig(method=method, steps=3, batch_size=4)
    result = run_trial(smol_resident, facts, facts, smol_base, cfg)
    assert len(result.records) == 4 and 0.0 <= result.aggregates["accuracy"] <= 1.0
    assert result.loss_curve[-1] < result.loss_curve[0]
    assert torch.equal(smol_resident.lm.model.model.layers[-1].self_attn.q_proj.weight, saved_q)


# --- the command line --------------------------------------------------------------------------------


@pytest.fixture()
def small_zsre(tmp_path, monkeypatch):
    """The first 8 records of the real ZsRE file, and a private raysem home for the distance tables
    (sharing the pulled embedded models)."""
    import json

    from raysem.paths import cache_dir

    from conftest import shared_file

    models = cache_dir("models")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "models").symlink_to(models, target_is_directory=True)
    monkeypatch.setenv("RAYSEM_HOME", str(tmp_path / "home"))
    records = json.loads(shared_file("zsre/zsre_mend_eval_1037.json").read_text())[:8]
    path = tmp_path / "zsre_small.json"
    path.write_text(json.dumps(records))
    return path


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from raysem.cli.trial import trial_app

    return CliRunner().invoke(trial_app, args)


def test_cli_runs_a_trial_and_prints_json(tiny_model_dir, small_zsre):
    import json

    args = ["--dataset", str(small_zsre), "--facts", "3", "--model", str(tiny_model_dir), "--steps", "1", "--json"]
    result = _cli(args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) == {"accuracy", "token_accuracy", "generality", "locality", "deviation_rate", "n_facts", "wall_s"}
    assert out["n_facts"] == 3 and 0 <= out["accuracy"] <= 1


@pytest.mark.slow
def test_cli_filters_the_training_set(smol, small_zsre):
    args = ["--dataset", str(small_zsre), "--facts", "3", "--steps", "1"]
    result = _cli(args + ["--filter-lambda", "1.0", "--replace", "0.5", "--gamma", "1.0"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--filter-lambda", "1.0"], "go together"),
        (["--method", "prefix"], "invalid trial settings"),
        (["--gamma", "-1"], "invalid trial settings"),
        (["--filter-lambda", "1.0", "--replace", "1.5"], "must be in [0, 1]"),
        (["--filter-lambda", "-1", "--replace", "0.5"], "must be >= 0"),
    ],
)
def test_cli_reports_bad_settings_with_exit_code_2(tiny_model_dir, small_zsre, extra, message):
    result = _cli(["--dataset", str(small_zsre), "--facts", "3", "--model", str(tiny_model_dir), *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_reports_an_unknown_dataset(tiny_model_dir, tmp_path):
    result = _cli(["--dataset", str(tmp_path / "missing.json"), "--facts", "3", "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and "neither a dataset name" in result.output


@pytest.fixture()
def resident64(tiny64):
    return ResidentModel(tiny64)


def _trained(resident, facts, dists, cfg) -> list[torch.Tensor]:
    """The method's weights after ``train`` on ``facts`` whose target distances are ``dists``."""
    from raysem.training.methods import attach
    from raysem.training.trial import train

    base = resident.base_records(facts)
    rows = {f.id: {**base[f.id], "dist_old": d} for f, d in zip(facts, dists)}
    torch.manual_seed(cfg.seed)
    with attach(resident.lm.model, cfg) as attachment:
        train(resident.lm, attachment, facts, rows, cfg)
        return [p.detach().clone() for p in attachment.parameters()]


def _gamma_effect(resident, facts, dists, cfg) -> float:
    """‖W(γ=3) − W(γ=0)‖ / ‖W(γ=0) − W_init‖ over the method's weights: how much γ changed what was learned."""
    start = _trained(resident, facts, dists, cfg.model_copy(update={"lr": 1e-30, "steps": 1}))
    plain = _trained(resident, facts, dists, cfg)
    weighted = _trained(resident, facts, dists, cfg.model_copy(update={"gamma": 3.0}))

    def norm(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return math.sqrt(sum(float((x - y).norm()) ** 2 for x, y in zip(a, b)))

    return norm(weighted, plain) / norm(plain, start)


def test_gamma_is_a_no_op_on_a_lone_fact_under_adamw_only(resident64):
    """(1 + γλ) scales a lone fact's loss by a constant: AdamW normalises it away (up to its eps), SGD
    takes (1 + γλ)-times bigger steps. Measured: 2e-4 under AdamW, 1.7 under SGD."""
    fact = _facts(1)
    assert _gamma_effect(resident64, fact, [0.25], TrialConfig(steps=5, lr=0.05, seed=3)) < 1e-2
    assert _gamma_effect(resident64, fact, [0.25], TrialConfig(steps=5, lr=0.5, seed=3, optimizer="sgd")) > 0.1


def test_gamma_reweights_facts_against_each_other_under_adamw(resident64):
    """λ(0.5) = 0 and λ(0) = 1: weights 1 and 4 change the direction AdamW follows (measured 0.86); at
    0.2 and 0.8, λ is equal and the factor is again a constant (6e-4)."""
    cfg = TrialConfig(steps=5, batch_size=2, lr=0.05, seed=3)
    assert _gamma_effect(resident64, _facts(2), [0.5, 0.0], cfg) > 0.1
    assert _gamma_effect(resident64, _facts(2), [0.2, 0.8], cfg) < 1e-2


def test_filtered_training_set_trains_on_k_star_and_tests_on_k(resident):
    """The filter path of a study: train on K* (K with its largest distances replaced), test on the original K."""
    import pandas as pd

    from raysem.service.spec import StudySpec
    from raysem.service.unit import _training_set

    facts = _facts()
    test = facts[:4]
    dists = [0.2, 0.9, math.nan, 0.6, 0.05, 0.1, 0.5, 0.7, 0.8, 0.3]
    table = pd.DataFrame({"fact_id": [f.id for f in facts], "dist_old": dists})
    spec = StudySpec(name="s", sampling={"k": 4}, filter={"filter_mode": "filter", "replace": 0.5})
    train, counts = _training_set(spec, {}, test, facts, table, seed=0)
    # q2 has no distance: kept; of q0, q1, q3 round(0.5 · 3) = 2 go (the largest, q1 and q3) for the smallest (q4, q5)
    assert sorted(f.id for f in train) == ["q0", "q2", "q4", "q5"]
    # the trained set's defined distances: q0, q4, q5 = 0.2, 0.05, 0.1
    assert counts == {
        "filter_kept_undefined": 1.0,
        "filter_pool_excluded": 0.0,
        "train_dist_mean": pytest.approx(0.35 / 3),
        "train_dist_var": pytest.approx(((0.2 - 0.35 / 3) ** 2 + (0.05 - 0.35 / 3) ** 2 + (0.1 - 0.35 / 3) ** 2) / 3),
    }
    base = resident.base_records(facts)
    result = run_trial(resident, train, test, base, TrialConfig(steps=2, batch_size=2))
    assert result.train_ids == [f.id for f in train] and result.test_ids == [f.id for f in test]
    assert [r["fact_id"] for r in result.records] == [f.id for f in test]
    assert result.aggregates["dist_undefined"] == sum(math.isnan(base[f.id]["dist_old"]) for f in train)
    hits = {r["fact_id"]: r["exact_match"] for r in result.records}
    agg = result.aggregates
    assert agg["retained_accuracy"] == pytest.approx(np.mean([hits["q0"], hits["q2"]]))
    assert agg["replaced_accuracy"] == pytest.approx(np.mean([hits["q1"], hits["q3"]]))
    assert (agg["n_retained"], agg["n_replaced"]) == (2.0, 2.0)
    added = run_trial(
        resident, train, [f for f in train if f.id in ("q4", "q5")], base, TrialConfig(steps=2, batch_size=2)
    )
    assert agg["trained_accuracy"] == pytest.approx(
        np.mean([hits["q0"], hits["q2"], *(r["exact_match"] for r in added.records)])
    )
