"""Houlsby et al. (2019) bottleneck adapters for decoder-only transformers, attached with forward hooks.

Each decoder block gets two adapters: one on the output of the attention sublayer and one on the output
of the feed-forward sublayer, both before the block's residual addition. Where those are depends on the
family (``raysem.models.architectures``): Llama, Mistral and Qwen2 ``self_attn.o_proj`` and
``mlp.down_proj``; BLOOM ``self_attention.dense`` and ``mlp.dense_4h_to_h``; GPT-NeoX ``attention.dense``
and ``mlp.dense_4h_to_h``. An adapter maps ``h`` to ``h + up(act(down(h)))``; ``up`` starts at zero, so a
freshly attached adapter is the identity. The adapters live outside the model's module tree (a
forward hook applies each one), so the model's parameters, buffers and state dict are untouched and
removing the hooks restores the base model exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from raysem.models.architectures import architecture_of


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))`` with a ``size``-wide bottleneck; the up-projection is initialised to zero."""

    def __init__(self, hidden_size: int, size: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, size)
        self.act = nn.SiLU()
        self.up = nn.Linear(size, hidden_size)
        nn.init.normal_(self.down.weight, std=init_std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM (``model.get_decoder().<blocks>`` of its architecture)."""
    arch = architecture_of(model)
    get_decoder = getattr(model, "get_decoder", None)
    blocks = getattr(get_decoder(), arch.blocks, None) if callable(get_decoder) else None
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__}: cannot find the decoder blocks (expected get_decoder().{arch.blocks})"
        )
    return blocks


class HoulsbyAdapters:
    """Two bottleneck adapters per decoder block, applied through forward hooks until :meth:`remove`."""

    def __init__(self, model: nn.Module, size: int) -> None:
        param = next(model.parameters())
        self.modules = nn.ModuleDict()
        self._handles: list[RemovableHandle] = []
        arch = architecture_of(model)
        for index, block in enumerate(decoder_blocks(model)):
            for path in (arch.attention_output, arch.mlp_output):
                target = block.get_submodule(path)
                hidden = getattr(target, "out_features", None)
                if hidden is None:
                    raise TypeError(f"layer {index}: {path} is a {type(target).__name__}, expected a linear layer")
                adapter = BottleneckAdapter(hidden, size).to(device=param.device, dtype=param.dtype)
                self.modules[f"{index}_{path.replace('.', '_')}"] = adapter
                self._handles.append(target.register_forward_hook(_apply(adapter)))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.modules.parameters())

    def train(self, mode: bool = True) -> None:
        self.modules.train(mode)

    def remove(self) -> None:
        """Detach every adapter; the model computes exactly what it computed before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _apply(adapter: BottleneckAdapter):
    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return adapter(output)

    return hook
