"""Houlsby bottleneck adapters: identity at start, placement after both sublayers, exact removal."""

from __future__ import annotations

import pytest
import torch

from raysem.models.encoding import encode_targets
from raysem.training.adapters import BottleneckAdapter, HoulsbyAdapters, decoder_blocks


def _logits(lm) -> torch.Tensor:
    batch = encode_targets(lm, ["What is the capital of France?", "Who wrote Hamlet?"], ["Paris", "Shakespeare"])
    with torch.no_grad():
        return lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_bottleneck_adapter_formula():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(hidden_size=6, size=3)
    assert torch.count_nonzero(adapter.up.weight) == 0 and torch.count_nonzero(adapter.up.bias) == 0
    h = torch.randn(2, 5, 6)
    assert torch.equal(adapter(h), h)
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    hidden = torch.nn.functional.silu(h @ adapter.down.weight.T + adapter.down.bias)
    by_hand = h + hidden @ adapter.up.weight.T + adapter.up.bias
    assert torch.allclose(adapter(h), by_hand, atol=1e-6)


def test_fresh_adapters_are_the_identity(tiny):
    before = _logits(tiny)
    adapters = HoulsbyAdapters(tiny.model, size=8)
    assert len(adapters.modules) == 2 * len(decoder_blocks(tiny.model))
    assert torch.equal(_logits(tiny), before)
    adapters.remove()


def test_adapters_sit_on_attention_and_feed_forward_outputs(tiny):
    adapters = HoulsbyAdapters(tiny.model, size=8)
    block = decoder_blocks(tiny.model)[1]
    for path, key in (("self_attn.o_proj", "1_self_attn_o_proj"), ("mlp.down_proj", "1_mlp_down_proj")):
        linear = block.get_submodule(path)
        adapter = adapters.modules[key]
        with torch.no_grad():
            adapter.up.weight.normal_()
        x = torch.randn(3, linear.in_features)
        h = x @ linear.weight.T
        expected = h + adapter.up(torch.nn.functional.silu(adapter.down(h)))
        assert torch.allclose(linear(x), expected, atol=1e-6)
    adapters.remove()


def test_removal_restores_outputs_and_state_dict(tiny):
    before_logits = _logits(tiny)
    keys = list(tiny.model.state_dict())
    adapters = HoulsbyAdapters(tiny.model, size=8)
    assert list(tiny.model.state_dict()) == keys  # adapters live outside the model's module tree
    with torch.no_grad():
        for p in adapters.parameters():
            p.normal_()
    assert not torch.allclose(_logits(tiny), before_logits)
    adapters.remove()
    assert torch.equal(_logits(tiny), before_logits)


def test_adapters_need_a_known_architecture():
    from raysem.models.architectures import ArchitectureError

    with pytest.raises(ArchitectureError, match="model type None is not supported"):
        HoulsbyAdapters(torch.nn.Linear(2, 2), size=2)
