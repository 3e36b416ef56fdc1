"""``raysem model list`` and ``raysem model check``: the catalogue, and what raysem would do with a model."""

from __future__ import annotations

import json
from typing import Any

import typer


def model_list() -> None:
    """The embedded models and the paper's models (Hugging Face ids, downloaded on first use)."""
    from raysem.models.catalog import EMBEDDED_MODELS, PAPER_MODELS
    from raysem.models.loader import embedded_model_dir, local_model_path

    for name in EMBEDDED_MODELS:
        state = "pulled" if (embedded_model_dir(name) / "model.safetensors").exists() else "pulled on first use"
        typer.echo(f"{name}\tembedded\t{state}")
    for hub_id, paper in PAPER_MODELS.items():
        state = "on this machine" if local_model_path(hub_id) else "downloaded on first use"
        typer.echo(f"{hub_id}\t{paper.name}, {paper.params_b:g} B\t{state}")


def describe(name: str) -> dict[str, Any]:
    """What ``raysem model check`` prints: the config, tokenizer and a meta-device model only."""
    from transformers import AutoTokenizer

    from raysem.models.architectures import architecture_of, peft_targets
    from raysem.models.loader import LoadedModel, local_model_path
    from raysem.service.estimate import meta_model, trainable_params
    from raysem.training.config import TrialConfig

    model = meta_model(name)
    arch = architecture_of(model)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    methods: dict[str, dict[str, Any]] = {}
    for method in ("lora", "adalora", "ia3"):
        methods[method] = {
            "modules": list(
                peft_targets(arch.family, "ia3") if method == "ia3" else TrialConfig(method=method).targets(model)
            ),
            "trainable": trainable_params(model, TrialConfig(method=method)),
            "source": "peft's mapping",
        }
    methods["adapter"] = {
        "modules": [arch.attention_output, arch.mlp_output],
        "trainable": trainable_params(model, TrialConfig(method="adapter")),
        "source": "Houlsby: after each block's attention and feed-forward output projections",
    }
    methods["full"] = {"modules": ["every weight"], "trainable": int(params), "source": "DeepSpeed ZeRO"}
    query = arch.query + (
        " (fused: the query is the first of each head's [q, k, v] row blocks)" if arch.fused_qkv else ""
    )
    out: dict[str, Any] = {
        "model": name,
        "architecture": arch.family,
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "params": int(params),
        "methods": methods,
        "table2_query": query,
        "figure5_features": f"{arch.final_norm} (get_decoder()'s last_hidden_state, last prompt token)",
        "weights_gib": {
            dtype: round(params * size / 2**30, 3) for dtype, size in (("float32", 4), ("bfloat16", 2), ("float16", 2))
        },
    }
    local = local_model_path(name)
    if local is None:
        out["tokenizer"] = "not on this machine (downloaded with the model)"
        return out
    tokenizer = AutoTokenizer.from_pretrained(local)
    lm = LoadedModel(model=None, tokenizer=tokenizer, name=name, chat=tokenizer.chat_template is not None)
    out["tokenizer"] = {
        "chat_template": tokenizer.chat_template is not None,
        "bos": repr(lm.bos_text) if lm.bos_text else "none added",
        "prompt_styles": ["chat", "fewshot", "zeroshot"] if lm.chat else ["fewshot", "zeroshot"],
    }
    return out


def model_check(
    model: str = typer.Argument(..., help="embedded name, model folder or Hugging Face id"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """What raysem would do with a model, from its config and tokenizer alone (no weights): architecture,
    layers and parameters, what each method tunes, the Table 2 query projection and Figure 5 features, the
    chat template and BOS, the weights' memory per precision. Exit 2 for a family raysem does not support."""
    from raysem.models.catalog import ModelError

    try:
        found = describe(model)
    except ModelError as exc:
        typer.echo(f"raysem: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(found))
        return
    typer.echo(
        f"{found['model']}: {found['architecture']}, {found['layers']} layers, hidden {found['hidden']}, {found['params']:,} parameters"
    )
    for method, info in found["methods"].items():
        typer.echo(f"  {method:8} {', '.join(info['modules'])}: {info['trainable']:,} trainable ({info['source']})")
    typer.echo(f"  Table 2 query projection: {found['table2_query']}")
    typer.echo(f"  Figure 5 features: {found['figure5_features']}")
    tok = found["tokenizer"]
    if isinstance(tok, dict):
        template = "a chat template" if tok["chat_template"] else "no chat template"
        tok = f"{template}, BOS {tok['bos']}; prompt styles {', '.join(tok['prompt_styles'])}"
    typer.echo(f"  tokenizer: {tok}")
    typer.echo("  weights: " + ", ".join(f"{d} {g:g} GiB" for d, g in found["weights_gib"].items()))
