"""Frobenius projections of a LoRA update (Table 2), last-token features and PCA (Figure 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysem.training.analysis import frobenius_analysis, has_lora_layers, last_token_features, pca
from raysem.training.config import TrialConfig
from raysem.training.methods import attach


def test_frobenius_analysis_on_a_hand_built_update(tiny):
    """W = diag(64, 63, ..., 1); ΔW = scale·B·A with B = [3e5, 4e7], A = [e5; e7]ᵀ (a rank-2 update on
    coordinates 5 and 7), so Uᵀ W V picks W's entries 59 and 57."""
    cfg = TrialConfig(method="lora", rank=2, alpha=4.0, target_modules=("q_proj",))
    with attach(tiny.model, cfg):
        layer = tiny.model.model.layers[1].self_attn.q_proj
        with torch.no_grad():
            layer.base_layer.weight.copy_(torch.diag(torch.arange(64, 0, -1, dtype=torch.float32)))
            a = torch.zeros(2, 64)
            a[0, 5], a[1, 7] = 1.0, 1.0
            b = torch.zeros(64, 2)
            b[5, 0], b[7, 1] = 3.0, 4.0
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
        out = frobenius_analysis(tiny.model, layer=-1, seed=0)
    scale = 4.0 / 2
    w_fro = math.sqrt(sum(k * k for k in range(1, 65)))
    assert out["layer"] == 1 and out["rank"] == 2
    assert out["dW_fro"] == pytest.approx(scale * 5.0)
    assert out["W_fro"] == pytest.approx(w_fro)
    assert out["proj_dW_fro"] == pytest.approx(math.hypot(59, 57))
    assert out["proj_W_fro"] == pytest.approx(math.hypot(64, 63))
    assert out["amplification"] == pytest.approx(10.0 / math.hypot(59, 57))
    # no orthonormal rank-2 pair captures more of W than its own top directions
    assert 0 < out["proj_random_fro"] < out["proj_W_fro"]


def test_frobenius_random_directions_are_seeded(tiny):
    with attach(tiny.model, TrialConfig(method="lora", rank=3)):
        first = frobenius_analysis(tiny.model, layer=0, seed=1)
        assert frobenius_analysis(tiny.model, layer=0, seed=1) == first
        assert frobenius_analysis(tiny.model, layer=0, seed=2)["proj_random_fro"] != first["proj_random_fro"]
        assert first["layer"] == 0 and first["dW_fro"] == 0.0  # B starts at zero


def test_frobenius_needs_lora_on_the_layer(tiny):
    assert not has_lora_layers(tiny.model)
    with pytest.raises(ValueError, match="no LoRA"):
        frobenius_analysis(tiny.model)
    with attach(tiny.model, TrialConfig(method="ia3")):
        assert not has_lora_layers(tiny.model)
    with attach(tiny.model, TrialConfig(method="lora", target_modules=("v_proj",))):
        assert not has_lora_layers(tiny.model)


def test_last_token_features_match_an_unpadded_forward(tiny):
    prompts = ["Who is the president of the US?", "Hi", "What is the capital of France, the country in Europe?"]
    feats = last_token_features(tiny, prompts, batch_size=3)
    assert feats.shape == (3, 64) and feats.dtype == np.float32
    for i, prompt in enumerate(prompts):
        ids = tiny.tokenizer(tiny.format_prompt(prompt), return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            hidden = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(feats[i], hidden.numpy(), atol=1e-4)


def test_pca_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    direction = np.array([3.0, 0.0, 4.0, 0.0]) / 5.0
    t = rng.normal(size=50)
    x = np.outer(t, direction) * 10 + rng.normal(scale=0.01, size=(50, 4)) + 7.0
    result = pca(x, n_components=15)
    assert result.scores.shape == (50, 4)  # clipped to min(n, d)
    np.testing.assert_allclose(np.abs(result.scores[:, 0]), np.abs((x - x.mean(0)) @ direction), rtol=1e-3, atol=1e-3)
    assert result.scores[np.abs(result.scores[:, 0]).argmax(), 0] > 0
    assert result.explained_variance_ratio[0] > 0.999
    # equals the eigen-decomposition of the covariance matrix
    eigvals = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    np.testing.assert_allclose(result.explained_variance, eigvals, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.explained_variance_ratio, eigvals / eigvals.sum(), atol=1e-9)


@pytest.mark.parametrize("solver", ["auto", "full", "randomized"])
def test_pca_matches_the_svd_on_every_path(solver):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 50)) @ np.diag(np.geomspace(5, 0.05, 50)) + 3.0
    result = pca(x, n_components=5, solver=solver)
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    assert result.explained_variance == pytest.approx(s[:5] ** 2 / 29, rel=1e-3)
    assert result.explained_variance_ratio == pytest.approx(s[:5] ** 2 / (s**2).sum(), rel=1e-3)
    assert np.abs(result.scores) == pytest.approx(np.abs(u[:, :5] * s[:5]), abs=1e-3 * s[0])
    assert (result.scores[np.abs(result.scores).argmax(axis=0), range(5)] > 0).all()


def test_pca_rejects_degenerate_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        pca(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="n_components"):
        pca(np.zeros((3, 3)), n_components=0)
