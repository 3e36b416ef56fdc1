"""Methods attach to a resident model, train only their own parameters, and leave no trace when removed."""

from __future__ import annotations

import math

import pytest
import torch

from raysem.models.encoding import encode_targets, target_logits
from raysem.training.config import TrialConfig
from raysem.training.methods import adalora_initial_rank, adalora_schedule, attach


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, saved: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert list(now) == list(saved)
    assert all(torch.equal(now[k], saved[k]) for k in saved)


def _train_a_little(lm, attachment, steps: int = 3) -> None:
    batch = encode_targets(lm, ["Who is the president of the US?"], ["Joe Biden"])
    optimizer = torch.optim.AdamW(attachment.parameters(), lr=0.05)
    attachment.train(True)
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(target_logits(lm.model, batch)[0], batch.labels[0])
        extra = attachment.regularization()
        (loss if extra is None else loss + extra).backward()
        optimizer.step()
        attachment.after_step(step)
        optimizer.zero_grad()
    attachment.train(False)


@pytest.mark.parametrize(
    ("method", "trainable"),
    [
        ("lora", lambda n: ".lora_A." in n or ".lora_B." in n),
        ("adalora", lambda n: ".lora_A." in n or ".lora_B." in n or ".lora_E." in n),
        ("ia3", lambda n: ".ia3_l." in n),
        ("full", lambda n: True),
    ],
)
def test_method_trains_its_own_parameters_and_is_removed_exactly(tiny, method, trainable):
    saved = _state(tiny.model)
    modules = {name: type(m) for name, m in tiny.model.named_modules()}
    cfg = TrialConfig(method=method, steps=3, target_modules=("q_proj", "v_proj"))
    attachment = attach(tiny.model, cfg)
    names = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert names and all(trainable(n) for n in names)
    assert {id(p) for p in attachment.parameters()} == {id(p) for p in tiny.model.parameters() if p.requires_grad}
    before = [p.detach().clone() for p in attachment.parameters()]
    _train_a_little(tiny, attachment)
    assert any(not torch.equal(b, p) for b, p in zip(before, attachment.parameters()))
    attachment.remove()
    _assert_same_state(tiny.model, saved)
    assert {name: type(m) for name, m in tiny.model.named_modules()} == modules
    assert all(p.requires_grad for p in tiny.model.parameters())
    assert not hasattr(tiny.model, "peft_config")
    attachment.remove()  # idempotent


def test_lora_targets_the_configured_modules(tiny):
    with attach(tiny.model, TrialConfig(method="lora", rank=4, alpha=8, target_modules=("q_proj", "o_proj"))):
        wrapped = {n.rsplit(".", 3)[0] for n, p in tiny.model.named_parameters() if p.requires_grad}
        assert wrapped == {f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "o_proj")}
        layer = tiny.model.model.layers[0].self_attn.q_proj
        assert layer.lora_A["default"].weight.shape == (4, 64)
        assert layer.scaling["default"] == 2.0


def test_adapter_method_trains_only_adapters(tiny):
    saved = _state(tiny.model)
    attachment = attach(tiny.model, TrialConfig(method="adapter", adapter_size=5))
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert sum(p.numel() for p in attachment.parameters()) == 2 * 2 * (64 * 5 + 5 + 5 * 64 + 64)
    _train_a_little(tiny, attachment)
    attachment.remove()
    _assert_same_state(tiny.model, saved)
    assert all(p.requires_grad for p in tiny.model.parameters())


def test_adalora_schedule_leaves_a_budgeting_phase():
    for steps in (1, 2, 5, 20, 100):
        s = adalora_schedule(steps)
        assert s["total_step"] == steps and s["tinit"] < steps - s["tfinal"]
    assert adalora_initial_rank(8) == 12 and adalora_initial_rank(1) == 2


def test_adalora_prunes_to_the_target_budget(tiny):
    cfg = TrialConfig(method="adalora", rank=2, steps=10, target_modules=("q_proj", "v_proj"))
    with attach(tiny.model, cfg) as attachment:
        _train_a_little(tiny, attachment, steps=cfg.steps)
        kept = sum(int(torch.count_nonzero(p)) for n, p in tiny.model.named_parameters() if ".lora_E." in n)
        assert kept == cfg.rank * 4  # target_r per wrapped module, 2 layers × (q_proj, v_proj)


def test_adalora_orthogonal_regularizer(tiny):
    init_r = adalora_initial_rank(2)
    with attach(tiny.model, TrialConfig(method="adalora", rank=2, steps=10)) as attachment:
        factors = [(n, p) for n, p in tiny.model.named_parameters() if ".lora_A." in n or ".lora_B." in n]
        with torch.no_grad():
            for _, p in factors:
                p.zero_()
        # ‖0 − I‖_F = sqrt(init_r) for every factor; weighted by 0.5
        assert attachment.regularization().item() == pytest.approx(0.5 * math.sqrt(init_r))
        with torch.no_grad():
            for _, p in factors:
                eye = torch.eye(*p.shape)
                p.copy_(eye)
        assert attachment.regularization().item() == pytest.approx(0.0, abs=1e-7)


def test_non_adalora_methods_have_no_regularizer(tiny):
    with attach(tiny.model, TrialConfig(method="lora")) as attachment:
        assert attachment.regularization() is None
