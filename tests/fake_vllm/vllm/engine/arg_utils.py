"""`EngineArgs`, the dataclass `vllm.LLM(model, **kwargs)` builds from its keyword arguments
(vllm/entrypoints/llm.py), so an unknown argument is a TypeError there as here. The fields are a subset
of vLLM 0.30.0's (vllm/engine/arg_utils.py): those SEAL sets and those a user most often passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class EngineArgs:
    model: str = ""
    tokenizer: str | None = None
    revision: str | None = None
    tokenizer_revision: str | None = None
    trust_remote_code: bool = False
    download_dir: str | None = None
    load_format: str = "auto"
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    quantization: str | None = None
    seed: int = 0
    max_model_len: int | None = None
    distributed_executor_backend: str | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.92
    kv_cache_memory_bytes: int | None = None
    cpu_offload_gb: float = 0
    block_size: int | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_logprobs: int = 20
    enforce_eager: bool = False
    disable_log_stats: bool = False
    compilation_config: Any = None
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    lora_dtype: str | None = "auto"
    fully_sharded_loras: bool = False
    enable_sleep_mode: bool = False
    enable_cumem_allocator: bool = False
    generation_config: str = "auto"
