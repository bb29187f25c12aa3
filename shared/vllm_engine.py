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

import os
from typing import Any

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
