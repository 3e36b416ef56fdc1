"""`raysem study plan`: memory per unit from the config alone, the fit check, FLOPs and time, the paper's specs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raysem.cli.main import app
from raysem.models.catalog import PAPER_MODELS
from raysem.models.tiny import TINY_SHAPE
from raysem.service.estimate import (
    GIB,
    GPUS,
    PlanError,
    activation_values,
    check_fit,
    cluster_gpus,
    meta_model,
    plan_study,
    weight_passes,
)
from raysem.service.spec import load_spec

from conftest import tiny_spec

REPO = Path(__file__).resolve().parents[2]
LLAMA2 = "meta-llama/Llama-2-7b-chat-hf"


def spec_file(tmp_path: Path, **fields) -> Path:
    data = {
        "name": "plan",
        "kind": "single_fact_deviation",
        "model": LLAMA2,
        "dataset": "worldfacts",
        "sampling": {"k": 1, "n_samplings": 64, "seed": 0},
        "trial": {"method": "lora", "steps": 5},
        "pack_size": 16,
        "max_concurrent": 8,
        **fields,
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("hub_id", sorted(PAPER_MODELS))
def test_the_paper_models_are_built_from_the_catalogue_with_their_published_sizes(hub_id):
    """No download: the meta-device model from the catalogue's config has the published parameter count."""
    model = meta_model(hub_id)
    assert next(model.parameters()).device.type == "meta"
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert params == pytest.approx(PAPER_MODELS[hub_id].params_b, rel=0.01)


def test_activation_values_by_hand(tiny_model_dir):
    """Tiny Llama: h 64, kv 2 heads x 16 = 32, MLP 128, 4 heads, 2 layers; 2 rows x 10 tokens."""
    model = meta_model(str(tiny_model_dir))
    h, kv, i, heads, layers = 64, 32, 128, 4, 2
    assert TINY_SHAPE["hidden_size"] == h and TINY_SHAPE["num_hidden_layers"] == layers
    frozen = 2 * 10 * layers * (5 * h + 3 * i + 2 * kv + heads * 10)
    full = 2 * 10 * layers * (8 * h + 4 * i + 2 * kv + heads * 10)
    assert activation_values(model, 2, 10) == frozen == 32_320
    assert activation_values(model, 2, 10, full=True) == full == 45_120


def test_a_7b_unit_that_cannot_fit_its_share_is_refused_with_the_numbers(tmp_path):
    """Four float32 copies of LLaMA2-7B on one 80 GB GPU: each needs > 25 GiB of weights, a quarter offers 20."""
    path = spec_file(
        tmp_path,
        precision="float32",
        resources={"cpu": 4, "gpu": 0.25, "gpu_memory_gb": 80, "expect_autoscaling": True},
    )
    spec = load_spec(path)
    with pytest.raises(PlanError, match=r"a unit needs \d+\.\d GiB \(weights 25\.\d+.*offers 20\.0 GiB"):
        plan_study(spec)
    with pytest.raises(PlanError):
        check_fit(spec)
    out = CliRunner().invoke(app, ["spec", "check", str(path)])
    assert out.exit_code == 2 and "resources.gpu: 0.25 of a 80 GB GPU offers 20.0 GiB" in out.output
    out = CliRunner().invoke(app, ["study", "plan", str(path)])
    assert out.exit_code == 2 and "plan refused" in out.output

    fits = plan_study(load_spec(path, overrides={"precision": "bfloat16", "resources": {"gpu": 1}}))
    assert fits.dtype == "bfloat16" and fits.device == "cuda" and fits.units_per_gpu is not None
    weights = (fits.params_b * 1e9 + 32000 * 4096) * 2  # every weight and the embedder's table copy, in bf16
    assert fits.unit.weights == pytest.approx(weights, rel=0.001)
    assert fits.units_per_gpu == int(80 * GIB // fits.unit.total) >= 1
    assert any("embedded model's tokenizer" in note for note in fits.notes)
    assert check_fit(load_spec(path, overrides={"resources": {"gpu_memory_gb": None}})) is None  # nothing declared


def test_plan_json_time_and_gpu_hours(tmp_path):
    path = spec_file(tmp_path, resources={"cpu": 4, "gpu": 1, "gpu_memory_gb": 24})
    out = CliRunner().invoke(app, ["study", "plan", str(path), "--gpu", "a100-80gb", "--gpus", "4", "--json"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert (plan["trials"], plan["units"], plan["packs"]) == (64, 4, 4)  # 64 single facts in packs of 16
    assert plan["gpu"]["memory_gb"] == 80 and plan["gpus"] == 4
    assert set(plan["unit"]) == {"weights", "trainable", "activations", "runtime", "total"}
    assert plan["units_per_gpu"] == int(80 // plan["unit"]["total"])
    # 4 packs on 4 GPUs at once: the wall time is the GPU-hours over 4 (one GPU a unit)
    assert plan["wall_hours"] < plan["gpu_hours"] and plan["gpu_hours"] > plan["flops"] / (312e12 * 0.3) / 3600
    out = CliRunner().invoke(
        app, ["study", "plan", str(path), "--set", "resources={cpu: 2, gpu: 0}", "--gpu", "a100-80gb", "--gpus", "1"]
    )
    assert out.exit_code == 2 and "its units reserve no GPU (resources.gpu is 0)" in out.output, out.output


def test_weight_passes_count_micro_batches_and_evaluation_batches(tmp_path):
    from raysem.service.estimate import EVAL_ROWS, Tokens, Work
    from raysem.training.config import TrialConfig

    tokens = Tokens(prompt=10, target=3, locality=1, probes=3, facts=64)
    packed = Work(TrialConfig(method="lora", steps=5), k=1, trials=32, units=1, packed=True)
    # 2 micro-batches x 5 steps x 3 passes; 32 x 4 rows = 2 batches of 64, each prefill + 3 tokens + loss
    assert EVAL_ROWS == 64 and weight_passes(packed, tokens) == 30 + 2 * 5
    one = Work(TrialConfig(method="lora", steps=5), k=100, trials=1, units=1, packed=False)
    assert weight_passes(one, tokens) == 15 + math.ceil(400 / 64) * 5


def test_the_cluster_names_the_gpus_a_unit_can_land_on():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    # any GPU node hosts {GPU: 1}: the plan takes the smallest (g5's A10G), over all 16 + 2 x 8 GPUs
    assert cluster_gpus(cluster, {"CPU": 4, "GPU": 1}) == ("a10g-24gb", 32)
    assert cluster_gpus(cluster, {"A100": 1, "GPU": 1}) == ("a100-40gb", 16)
    with pytest.raises(PlanError, match="no node type"):
        cluster_gpus(cluster, {"GPU": 1, "TPU": 1})
    assert set(GPUS) >= {"a100-80gb", "a10g-24gb"}


@pytest.mark.parametrize("spec", sorted(p.name for p in (REPO / "jobs" / "paper").glob("*.yaml")))
def test_every_paper_spec_plans_on_the_cluster_and_checks_quick(spec):
    """Each paper-scale spec fits the GPUs of cluster.yaml's node types and its --quick form is a valid spec
    on the embedded model (running it: ``python jobs/<any>.py --spec jobs/paper/<spec> --quick``)."""
    path = REPO / "jobs" / "paper" / spec
    out = CliRunner().invoke(app, ["study", "plan", str(path), "--cluster", str(REPO / "cluster.yaml"), "--json"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["model"] == LLAMA2 and plan["device"] == "cuda" and plan["dtype"] == "bfloat16"
    assert plan["units_per_gpu"] >= 1 and plan["gpu_hours"] > 0 and plan["wall_hours"] > 0
    quick = load_spec(path, quick=True)
    assert quick.model == "smollm2-135m-instruct" and quick.resources.gpu == 0 and check_fit(quick) is None


def test_plan_against_a_measured_tiny_unit(tmp_path, tiny_model_dir):
    """``raysem bench plan``'s measurement of a real packed unit (a fresh process, peak RSS) lands within
    ±30% of the plan's memory."""
    from raysem.bench.plan_check import run_plan_check

    path = tiny_spec(
        tmp_path, tiny_model_dir, "measured", sweep={}, sampling={"k": 1, "n_samplings": 16, "seed": 0}, pack_size=16
    )
    (row,) = run_plan_check(path, [str(tiny_model_dir)], {})
    assert row["unit"] == "16 packed single-fact trials"
    assert 0.7 <= row["measured_gib"] / row["planned_gib"] <= 1.3, row
    assert row["seconds"] > 0 and row["planned_flops"] > 0
