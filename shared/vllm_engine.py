"""Arguments for a vLLM engine that shares its GPU with the run's transformers models and processes.

vLLM's defaults assume it owns the GPU: it reserves `gpu_memory_utilization` (0.9) of the device's
*total* memory and fails at start-up when that much is not free (vllm/v1/worker/gpu_worker.py), then
sizes its KV cache for `max_model_len`, by default the model's whole context (131072 for Llama 3.2),
and fails when that does not fit. Under `accelerate launch` its single-process executor puts every
rank's engine on the first GPU. So SEAL sizes the engine from what this run needs and what is free, and
uses vLLM's `external_launcher` backend under several processes, as TRL's colocate mode does
(trl/trainer/grpo_trainer.py), so each rank's engine lives on that rank's GPU. The user's engine
arguments (`sampling.vllm`, `inner.vllm`) take precedence over every value chosen here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

SHARE_OF_FREE = 0.9
"""Of the memory free when the engine starts: the rest stays for the allocator's fragmentation."""


def device_memory() -> tuple[int, int] | None:
    """(free, total) bytes of this rank's CUDA device; None without one."""
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.cuda.mem_get_info(device)


def engine_args(user: dict[str, Any], *, max_model_len: int | None = None, **ours: Any) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM`: `ours` (what SEAL sets from its own config), then sizes from
    the run and the device, then the user's engine arguments over all of them."""
    args: dict[str, Any] = dict(ours)
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    memory = device_memory()
    if memory is not None:
        free, total = memory
        args["gpu_memory_utilization"] = round(SHARE_OF_FREE * free / total, 4)
        args["enable_sleep_mode"] = True  # sleep() hands the memory back while the student trains
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args["distributed_executor_backend"] = "external_launcher"
    return {**args, **user}


# ---------------------------------------------------------------- one teacher engine per run

_VOLATILE_CONFIG = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache")
"""config.json keys that differ between checkpoints of one model without changing its shapes."""


def architecture(model_path: str) -> str:
    """What an engine's weights must match: the model's config.json, less the keys a save rewrites."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return json.dumps({k: v for k, v in config.items() if k not in _VOLATILE_CONFIG}, sort_keys=True)


def checkpoint_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the checkpoint's own (transformers) names, one tensor at a time, as vLLM's model
    `load_weights` takes them (its default loader feeds it the same names from the same files)."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path} has no *.safetensors weights to load into the vLLM engine")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


@dataclass
class _Engine:
    llm: Any
    key: str
    max_model_len: int | None
    in_use: bool = True


_ENGINES: list[_Engine] = []


def teacher_engine(vllm: Any, model_path: str, args: dict[str, Any]) -> _Engine:
    """A vLLM engine serving the teacher checkpoint at `model_path`: the run's idle engine for a model of
    the same architecture and engine arguments when there is one, with the checkpoint's weights loaded
    into it, else a new one. ReST-EM writes a new teacher every round and the evaluation samples several;
    each used to get its own engine, and vLLM does not reliably free an engine's memory when it is deleted.
    The reload follows TRL's colocate weight sync (trl/generation/vllm_generation.py `sync_weights`): empty
    torch's cache, wake the weights only, `load_weights` on the in-process model, then the KV cache, and
    reset the prefix cache (cached prefixes hold the old weights' keys). The per-request seeds make the
    engine's own `seed` irrelevant to what is drawn, so it does not split engines; an engine whose
    max_model_len is too short for the new prompts does."""
    key = json.dumps({"model": architecture(model_path),
                      "args": {k: v for k, v in args.items() if k not in ("seed", "max_model_len")}},
                     sort_keys=True, default=str)
    need = args.get("max_model_len")
    for engine in _ENGINES:
        fits = engine.max_model_len is None or (need is not None and need <= engine.max_model_len)
        if engine.key == key and not engine.in_use and fits:
            _load(engine, model_path)
            engine.in_use = True
            return engine
    engine = _Engine(vllm.LLM(model=model_path, **args), key, need)
    if args.get("enable_sleep_mode"):  # without sleep mode it cannot give its memory back: not shared
        _ENGINES.append(engine)
    return engine


def _load(engine: _Engine, model_path: str) -> None:
    llm = engine.llm
    torch.cuda.empty_cache()  # what training left in torch's cache goes back before the weights wake
    llm.wake_up(tags=["weights"])
    # the in-process model (V1 engine with the external_launcher backend or without multiprocessing, as
    # TRL's colocate mode runs it)
    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    model.load_weights(checkpoint_weights(model_path))
    llm.wake_up(tags=["kv_cache"])
    llm.reset_prefix_cache()


def release(engine: _Engine) -> None:
    """Sleep at level 2 (weights and KV cache dropped, no host copy) and hand the engine back to the run
    for the next teacher checkpoint."""
    engine.llm.sleep(level=2)
    engine.in_use = False
