"""The supported families on tiny random models built from their config classes (no download): Llama,
Mistral, Qwen2, BLOOM and GPT-NeoX, with the embedded model's tokenizer. Every method trains and leaves no
trace, packed LoRA equals unpacked, Table 2 and Figure 5 agree with a hand computation on one layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from raysem.data.facts import Fact, Probe
from raysem.models.architectures import ARCHITECTURES, ArchitectureError, architecture_of, peft_targets, query_rows
from raysem.models.loader import load_model
from raysem.training.adapters import decoder_blocks
from raysem.training.analysis import frobenius_analysis, last_token_features
from raysem.training.config import TrialConfig
from raysem.training.methods import attach
from raysem.training.packed import run_packed_trials
from raysem.training.trial import ResidentModel, run_trial

HEADS = 4
LLAMA_LIKE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=2
)
CONFIGS = {
    "llama": lambda v: LlamaConfig(vocab_size=v, **LLAMA_LIKE),
    "mistral": lambda v: MistralConfig(vocab_size=v, **LLAMA_LIKE),
    "qwen2": lambda v: Qwen2Config(vocab_size=v, **LLAMA_LIKE),
    "bloom": lambda v: BloomConfig(vocab_size=v, hidden_size=32, n_layer=2, n_head=HEADS),
    "gpt_neox": lambda v: GPTNeoXConfig(
        vocab_size=v,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        rotary_pct=0.5,
    ),
}
FACTS = [
    Fact(id="a", prompt="Who wrote Hamlet?", target="Charles Dickens", locality=(Probe("Where is Rome?", "Italy"),)),
    Fact(id="b", prompt="What is the capital of Peru?", target="Quito", rephrasings=("Peru's capital is?",)),
]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family_dir(request, tmp_path_factory, smol) -> tuple[str, Path]:
    """A 2-layer random model of the family, in float64 (float32 weights on disk), with SmolLM2's tokenizer."""
    family = request.param
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[family](len(smol.tokenizer)))
    folder = tmp_path_factory.mktemp(family)
    model.save_pretrained(folder)
    smol.tokenizer.save_pretrained(folder)
    return family, folder


def test_every_family_has_its_table_entry_and_peft_targets(family_dir):
    family, folder = family_dir
    lm = load_model(str(folder))
    arch = architecture_of(lm.model)
    assert arch is ARCHITECTURES[family]
    blocks = decoder_blocks(lm.model)
    for path in (arch.query, arch.attention_output, arch.mlp_output):
        assert isinstance(blocks[0].get_submodule(path), torch.nn.Linear), path
    assert isinstance(lm.model.get_submodule(arch.final_norm), torch.nn.Module)
    fused = family in ("bloom", "gpt_neox")
    assert arch.fused_qkv == fused
    assert TrialConfig().targets(lm.model) == (("query_key_value",) if fused else ("q_proj", "v_proj"))
    assert TrialConfig(target_modules=("dense",)).targets(lm.model) == ("dense",)


@pytest.mark.parametrize("method", ["lora", "adalora", "adapter", "ia3", "full"])
def test_every_method_trains_and_leaves_no_trace(family_dir, method):
    _, folder = family_dir
    lm = load_model(str(folder), dtype=torch.float64)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    resident = ResidentModel(lm)
    base = resident.base_records(FACTS)
    result = run_trial(resident, FACTS, FACTS, base, TrialConfig(method=method, steps=2, lr=0.01))
    assert len(result.loss_curve) == 2 and all(torch.isfinite(torch.tensor(result.loss_curve)))
    assert result.loss_curve[-1] != result.loss_curve[0], "a trained method changes the loss"
    after = lm.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_packed_lora_equals_unpacked(family_dir):
    _, folder = family_dir
    lm = load_model(str(folder), dtype=torch.float64)
    resident = ResidentModel(lm)
    base = resident.base_records(FACTS)
    cfgs = [TrialConfig(rank=4, alpha=8.0, lr=0.05, steps=3, seed=s, optimizer="sgd") for s in (1, 2)]
    packed = run_packed_trials(lm, FACTS, cfgs, base, resident.embedder)
    for fact, cfg, got in zip(FACTS, cfgs, packed):
        want = run_trial(resident, [fact], [fact], base, cfg)
        torch.testing.assert_close(torch.tensor(got.loss_curve), torch.tensor(want.loss_curve), rtol=1e-6, atol=1e-9)
        assert [r["y_new"] for r in got.records] == [r["y_new"] for r in want.records]


def _query_rows_by_hand(weight: torch.Tensor, family: str) -> torch.Tensor:
    """The query's rows, head by head: a fused projection's output is [head 0: q k v, head 1: q k v, ...]."""
    if family not in ("bloom", "gpt_neox"):
        return weight
    head_dim = weight.shape[0] // (3 * HEADS)
    return torch.cat([weight[h * 3 * head_dim : h * 3 * head_dim + head_dim] for h in range(HEADS)])


def test_table2_and_figure5_by_hand_on_one_layer(family_dir):
    family, folder = family_dir
    lm = load_model(str(folder), dtype=torch.float64)
    cfg = TrialConfig(rank=4, alpha=8.0, lr=0.05, steps=3)
    resident = ResidentModel(lm)
    base = resident.base_records(FACTS)
    with attach(lm.model, cfg) as attachment:
        from raysem.training.trial import train

        train(lm, attachment, FACTS, base, cfg)
        got = frobenius_analysis(lm.model, layer=0)
        query = decoder_blocks(lm.model)[0].get_submodule(architecture_of(lm.model).query)
        lora_a, lora_b = query.lora_A["default"].weight, query.lora_B["default"].weight
        delta = _query_rows_by_hand((lora_b @ lora_a * query.scaling["default"]).detach(), family)
        weight = _query_rows_by_hand(query.get_base_layer().weight.detach(), family)
    assert got["dW_fro"] == pytest.approx(torch.linalg.matrix_norm(delta).item(), rel=1e-9)
    assert got["W_fro"] == pytest.approx(torch.linalg.matrix_norm(weight).item(), rel=1e-9)
    assert got["dW_fro"] > 0 and weight.shape[0] == 32, "the query's rows: hidden, not 3 x hidden"

    features = last_token_features(lm, [FACTS[0].prompt])
    ids = lm.tokenizer(lm.format_prompt(FACTS[0].prompt), return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
    torch.testing.assert_close(torch.from_numpy(features[0]).double(), hidden.float().double(), rtol=1e-5, atol=1e-6)


def test_query_rows_of_a_fused_projection():
    weight = torch.arange(3 * HEADS * 2 * 5, dtype=torch.float64).reshape(3 * HEADS * 2, 5)  # head_dim 2
    got = query_rows(weight, ARCHITECTURES["bloom"], HEADS)
    assert torch.equal(got, _query_rows_by_hand(weight, "bloom")) and got.shape == (HEADS * 2, 5)
    assert torch.equal(got[:2], weight[:2]) and torch.equal(got[2:4], weight[6:8])
    assert query_rows(weight, ARCHITECTURES["llama"], HEADS) is weight


def test_an_unsupported_family_is_named():
    from transformers import GPT2Config

    with pytest.raises(ArchitectureError, match="model type 'gpt2' is not supported: raysem knows llama, mistral"):
        architecture_of(GPT2Config())
    assert peft_targets("gpt2", "lora") == ("c_attn",)
    with pytest.raises(ArchitectureError, match="no default lora targets for model type 'nope'"):
        peft_targets("nope", "lora")


def test_model_check_on_a_bloom_folder_and_a_gpt2_folder(family_dir, tmp_path, smol):
    """`raysem model check` reads the config and tokenizer only; GPT-2's family is refused, named."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from typer.testing import CliRunner

    from raysem.cli.main import app

    family, folder = family_dir
    if family != "bloom":
        pytest.skip("one fused family is enough for the command")
    out = CliRunner().invoke(app, ["model", "check", str(folder)])
    assert out.exit_code == 0, out.output
    assert "bloom, 2 layers, hidden 32" in out.output
    assert "lora     query_key_value" in out.output and "(peft's mapping)" in out.output
    assert (
        "self_attention.query_key_value (fused: the query is the first of each head's [q, k, v] row blocks)"
        in out.output
    )
    assert "transformer.ln_f" in out.output and "a chat template, BOS none added" in out.output

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(smol.tokenizer))).save_pretrained(
        tmp_path / "gpt2"
    )
    out = CliRunner().invoke(app, ["model", "check", str(tmp_path / "gpt2")])
    assert out.exit_code == 2 and "model type 'gpt2' is not supported" in out.output


def test_chat_prompting_needs_the_tokenizers_chat_template(family_dir, tmp_path, smol):
    """A study (and `raysem spec check`) refuses prompt_style chat on a model without a chat template."""
    import shutil

    from raysem.models.catalog import ModelError
    from raysem.models.loader import check_model

    family, folder = family_dir
    if family != "llama":
        pytest.skip("one family is enough for the tokenizer rule")
    check_model(str(folder), "chat")  # SmolLM2's tokenizer has a template
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for name in ("chat_template.jinja", "chat_template.json"):
        (bare / name).unlink(missing_ok=True)
    tokenizer = smol.tokenizer.__class__.from_pretrained(bare)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(bare)
    with pytest.raises(ModelError, match="has no chat template for prompt_style chat; use fewshot"):
        check_model(str(bare), "chat")
    check_model(str(bare), "fewshot")
