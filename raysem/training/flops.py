"""Analytic FLOP counts: a causal LM's shape (``ModelShape``) and the useful FLOPs of one single-fact trial by
part. Model FLOPs utilisation (MFU) is these FLOPs per second over a measured matmul peak."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from raysem.data.facts import Fact
from raysem.models.loader import LoadedModel
from raysem.training.config import TrialConfig
from raysem.training.packed import is_target_module


@dataclass(frozen=True)
class ModelShape:
    """The numbers the analytic FLOP count needs."""

    linear: int
    lora: int
    layers: int
    attn_width: int
    hidden: int
    vocab: int

    @classmethod
    def of(cls, lm: LoadedModel, cfg: TrialConfig) -> ModelShape:
        return cls.of_model(lm.model, cfg)

    @classmethod
    def of_model(cls, model: nn.Module, cfg: TrialConfig) -> ModelShape:
        """The shape of a Hugging Face causal LM with LoRA of ``cfg``'s rank on ``cfg.target_modules``."""
        decoder = model.get_decoder()
        linears = [(n, m) for n, m in decoder.named_modules() if isinstance(m, nn.Linear)]
        config = model.config
        targets = cfg.targets(model)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            linear=sum(m.in_features * m.out_features for _, m in linears),
            lora=sum(cfg.rank * (m.in_features + m.out_features) for n, m in linears if is_target_module(n, targets)),
            layers=config.num_hidden_layers,
            attn_width=config.num_attention_heads * head_dim,
            hidden=config.hidden_size,
            vocab=model.get_output_embeddings().out_features,
        )

    def forward(self, new: int, past: int = 0, logits: int = 0, lora: bool = True) -> float:
        attention = 4 * self.layers * self.attn_width * (new * past + new * (new + 1) / 2)
        return 2 * (self.linear + (self.lora if lora else 0)) * new + attention + 2 * self.hidden * self.vocab * logits

    def train_step(self, tokens: int, targets: int, full: bool = False) -> float:
        """One sequence's forward and backward; ``full`` (full fine-tuning) adds the base weights' gradients,
        ``2·N·T + 2·d·V·t``."""
        attention = 4 * self.layers * self.attn_width * tokens * (tokens + 1) / 2
        backward = (
            2 * self.linear * tokens + 4 * self.lora * tokens + 2 * attention + 2 * self.hidden * self.vocab * targets
        )
        if full:
            backward += 2 * self.linear * tokens + 2 * self.hidden * self.vocab * targets
        return self.forward(tokens, logits=targets) + backward

    def generate(self, prompt: int, budget: int, lora: bool = True) -> float:
        steps = sum(self.forward(1, past=prompt + j, logits=1, lora=lora) for j in range(max(1, budget) - 1))
        return self.forward(prompt, logits=1, lora=lora) + steps


def trial_flops(lm: LoadedModel, fact: Fact, cfg: TrialConfig) -> dict[str, float]:
    """Useful FLOPs of one single-fact trial by part: ``base`` answers, ``train`` (``cfg.steps`` steps), ``evaluate``."""
    shape = ModelShape.of(lm, cfg)

    def n_prompt(question: str) -> int:
        return len(lm.tokenizer(lm.format_prompt(question), add_special_tokens=False).input_ids)

    target = lm.answer_budget(fact.prompt, fact.target)
    tokens = n_prompt(fact.prompt) + target
    probes = [(p.prompt, lm.answer_budget(p.prompt, p.answer)) for p in (*fact.locality, *fact.portability)]
    base = shape.generate(n_prompt(fact.prompt), target, lora=False)
    base += sum(shape.generate(n_prompt(q), b, lora=False) for q, b in probes[: len(fact.locality)])
    train = cfg.steps * shape.train_step(tokens, target)
    evaluation = shape.generate(n_prompt(fact.prompt), target) + shape.forward(tokens, logits=target)
    evaluation += sum(shape.generate(n_prompt(q), target) for q in fact.rephrasings)
    evaluation += sum(shape.generate(n_prompt(q), b) for q, b in probes)
    return {"base": base, "train": train, "evaluate": evaluation}
