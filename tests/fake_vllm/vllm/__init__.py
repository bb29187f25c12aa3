"""A small in-test engine with the part of vLLM's offline API that SEAL uses (names and signatures as in
vLLM's documentation: `LLM(model, ..., enable_lora, max_lora_rank, max_loras)`, `LLM.generate(prompts,
sampling_params, *, use_tqdm, lora_request)`, `SamplingParams(n, temperature, top_p, max_tokens, seed,
stop)`, `RequestOutput.outputs[i].text`), backed by transformers and peft so its answers can be compared.

As strict as the real engine where SEAL could go wrong: `max_lora_rank` must be one of vLLM's ranks
(vllm/config/lora.py `MaxLoRARanks`), `max_model_len` at most the model's context (vllm/config/model.py
`_get_and_verify_max_len`), SamplingParams within vLLM's ranges (vllm/sampling_params.py `_verify_args`:
temperature in [0, 2], a VLLMValidationError, not a ValueError), a LoRARequest id above 0 with a path
(vllm/lora/request.py), a prompt is a string or a TokensPrompt dict (vllm/inputs/llm.py), and a string is
tokenised with the tokenizer's special tokens, as vLLM's input processor does (so a chat-formatted Llama-3
string gets a second BOS). With `DEVICE` set (a simulated GPU: total and free bytes) an engine reserves
gpu_memory_utilization × total and fails when that is not free (vllm/v1/worker/utils.py `request_memory`),
then fails when max_model_len tokens of KV cache do not fit beside the weights
(vllm/v1/core/kv_cache_utils.py); it sits on cuda:0 unless built with the external_launcher backend, which
takes LOCAL_RANK's GPU; sleep() returns its memory, wake_up() takes it back (`tags` "weights" and "kv_cache"
one at a time, vllm/v1/worker/gpu_worker.py), and generating while any part sleeps fails. After sleep(level=2)
the weights are gone: vLLM then computes with uninitialised memory, the fake refuses to generate until new
weights are loaded through the in-process model
(`llm_engine.model_executor.driver_worker.model_runner.model.load_weights`, which takes (checkpoint name,
tensor) pairs and raises ValueError on a name the model lacks, as vLLM's models do through
`AutoWeightsLoader`; the weights count as loaded once every parameter was). That model is reachable only when
the engine core runs in-process: the external_launcher backend (which needs torch.distributed's env://
variables) or VLLM_ENABLE_V1_MULTIPROCESSING=0. An engine asleep keeps CONTEXT bytes. One sleep-mode (cumem-
allocator) engine per process: vLLM's memory pool for sleep mode is process-wide
(vllm/device_allocator/cumem.py `CuMemAllocator.get_instance`) and a worker with the cumem allocator (which
sleep mode turns on, or `enable_cumem_allocator`) asserts it is empty when it loads its weights
(vllm/v1/worker/gpu_worker.py `_maybe_get_memory_pool_context`); an engine asleep still counts, until it is
garbage. One deleted while asleep counts for good: its allocations were unmapped by sleep and the pool's free
path unmaps them again (vllm/device_allocator/cumem.py), so the fake never takes it as freed (SEAL wakes an
engine before deleting it). An engine core in this process freezes the garbage collector's heap when it starts
(vllm/v1/engine/core.py `freeze_gc_heap`): an engine, being a reference cycle, is then never collected until
the heap is unfrozen."""

from __future__ import annotations

import gc
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

CALLS: list[dict[str, Any]] = []
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEVICE: dict[str, int] | None = None
"""A simulated GPU, {"total": bytes, "free": bytes}; None: no memory checks."""
GiB = 1024 ** 3
CONTEXT = 4096
"""Bytes an engine keeps while asleep (CUDA context, graphs): a second engine's share of free memory
differs from the first's."""
SLEEP_MODE_ENGINES: "weakref.WeakSet[LLM]" = weakref.WeakSet()
"""Live engines built with enable_sleep_mode or enable_cumem_allocator (sleep mode turns it on,
vllm/config/model.py): those whose weights sit in vLLM's process-wide pool."""
DELETED_ASLEEP: list[int] = [0]
"""Sleep-mode engines deleted while asleep: never freed."""


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop: list[str] | str | None = None

    def __post_init__(self):  # the ranges vllm/sampling_params.py `_verify_args` refuses (those SEAL could send)
        from vllm.exceptions import VLLMValidationError

        if not isinstance(self.n, int) or self.n < 1:  # `_verify_num_sequences`
            raise VLLMValidationError(f"n must be an int of at least 1, got {self.n!r}.")
        if not math.isfinite(self.temperature) or not 0.0 <= self.temperature <= 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.")


@dataclass
class CompletionOutput:
    index: int
    text: str


def _collected(state: dict[str, Any]) -> None:
    if state["sleep_mode"] and state["asleep"]:
        DELETED_ASLEEP[0] += 1
    elif DEVICE is not None:
        DEVICE["free"] += state["held"]


@dataclass
class RequestOutput:
    prompt: str
    outputs: list[CompletionOutput] = field(default_factory=list)


class LLM:
    def __init__(self, model: str, *, seed: int = 0, enable_lora: bool = False, max_lora_rank: int = 16,
                 max_loras: int = 1, gpu_memory_utilization: float = 0.92, max_model_len: int | None = None,
                 enable_sleep_mode: bool = False, distributed_executor_backend: str | None = None,
                 **engine_args: Any):
        import os

        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_lora_rank not in MAX_LORA_RANKS:
            raise ValueError(f"1 validation error for LoRAConfig\nmax_lora_rank\n  Input should be "
                             f"{', '.join(map(str, MAX_LORA_RANKS))} [input_value={max_lora_rank}]")
        from vllm.engine.arg_utils import EngineArgs

        EngineArgs(model=model, seed=seed, enable_lora=enable_lora, max_lora_rank=max_lora_rank, max_loras=max_loras,
                   gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                   enable_sleep_mode=enable_sleep_mode, distributed_executor_backend=distributed_executor_backend,
                   **engine_args)  # an unknown argument: TypeError, as vllm/entrypoints/llm.py's EngineArgs(...)
        cumem = enable_sleep_mode or bool(engine_args.get("enable_cumem_allocator"))
        if cumem and (len(SLEEP_MODE_ENGINES) or DELETED_ASLEEP[0]):
            raise AssertionError("CuMem allocator can only be used for one instance per process.")
        self.path, self.enable_lora, self.max_lora_rank = model, enable_lora, max_lora_rank
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        # vllm/config/model.py `_get_and_verify_max_len` (a generative model: no tokenizer cap) on the length
        # of vllm/transformers_utils/model_arch_config_convertor.py: the smallest key, model_max_length overriding
        cfg = self.model.config
        keys = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
        derived = getattr(cfg, "model_max_length", None) or min(
            getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None)
        long_ok = os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0").strip().lower() in ("1", "true")  # envs.py
        if max_model_len is not None and max_model_len > derived and not long_ok:
            raise ValueError(f"User-specified max_model_len ({max_model_len}) is greater than the derived "
                             f"max_model_len (max_position_embeddings={derived} or model_max_length=None in "
                             "model's config.json). To allow overriding this maximum, set the env var "
                             "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1.")
        self.adapters: dict[int, Any] = {}
        self.sleep_mode, self.dropped = enable_sleep_mode, False
        self.sleeping: set[str] = set()  # of "weights", "kv_cache"
        launched = distributed_executor_backend == "external_launcher"  # else the single-process executor:
        self.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if launched else "cuda:0"  # whatever the rank
        if launched and not torch.distributed.is_initialized():  # its env:// rendezvous (torch's message)
            for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise ValueError(f"Error initializing torch.distributed using env:// rendezvous: environment "
                                     f"variable {name} expected, but not set")
        # the engine core runs in this process only with external_launcher or V1 multiprocessing off
        # (vllm/v1/engine/llm_engine.py: model_executor exists only then)
        in_process = launched or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self.llm_engine = _Engine(self) if in_process else _ClientEngine()
        self.loaded: set[str] = set()
        self.prefix_cache_resets = 0
        self.reserved = self._reserve(gpu_memory_utilization, max_model_len)
        if cumem:
            SLEEP_MODE_ENGINES.add(self)
        # what it holds now, handed back when it is garbage (awake)
        self.state: dict[str, Any] = {"held": self.reserved, "asleep": False, "sleep_mode": enable_sleep_mode}
        weakref.finalize(self, _collected, self.state)
        CALLS.append({"init": model, "enable_lora": enable_lora, "engine_args": engine_args, "device": self.device,
                      "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len})
        if in_process:  # the engine core's start and warm-up freeze the heap (vllm/utils/gc_utils.py)
            gc.collect()
            gc.freeze()

    def _reserve(self, utilization: float, max_model_len: int | None) -> int:
        if DEVICE is None:
            return 0
        total, free = DEVICE["total"], DEVICE["free"]
        requested = int(utilization * total)
        if requested > free:
            raise ValueError(f"Free memory on device ({free / GiB:.2f}/{total / GiB:.2f} GiB) on startup is less "
                             f"than desired GPU memory utilization ({utilization}, {requested / GiB:.2f} GiB). "
                             "Decrease GPU memory utilization or reduce GPU memory used by other processes.")
        cfg = self.model.config
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4
        length = max_model_len or cfg.max_position_embeddings
        available = requested - weights
        if length * per_token > available:
            raise ValueError(f"To serve at least one request with the models's max seq len ({length}), "
                             f"({length * per_token / GiB:.4f} GiB KV cache is needed, which is larger than the "
                             f"available KV cache memory ({available / GiB:.4f} GiB). Try increasing "
                             "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")
        DEVICE["free"] -= requested
        return requested

    @property
    def asleep(self) -> bool:
        return bool(self.sleeping)

    def _bytes(self, tag: str) -> int:
        """What waking `tag` takes; an engine asleep keeps its CUDA context and graphs (CONTEXT bytes)."""
        weights = min(self.reserved, sum(p.numel() * p.element_size() for p in self.model.parameters()))
        return weights if tag == "weights" else max(0, self.reserved - weights - CONTEXT)

    def sleep(self, level: int = 1) -> None:
        if not self.sleep_mode:
            raise ValueError("Sleep mode is not enabled: build the engine with enable_sleep_mode=True")
        if DEVICE is not None:
            freed = sum(self._bytes(t) for t in {"weights", "kv_cache"} - self.sleeping)
            DEVICE["free"] += freed
            self.state["held"] -= freed
        self.sleeping = {"weights", "kv_cache"}
        self.state["asleep"] = True
        if level == 2:
            self.dropped, self.loaded = True, set()

    def wake_up(self, tags: list[str] | None = None) -> None:
        tags = ["weights", "kv_cache"] if tags is None else tags
        if set(tags) - {"weights", "kv_cache"}:
            raise ValueError(f"unknown wake_up tags {tags}")
        for tag in [t for t in tags if t in self.sleeping]:
            if DEVICE is not None:
                if self._bytes(tag) > DEVICE["free"]:
                    raise RuntimeError(f"CUDA out of memory: waking {tag} needs {self._bytes(tag)} bytes, "
                                       f"{DEVICE['free']} free")
                DEVICE["free"] -= self._bytes(tag)
                self.state["held"] += self._bytes(tag)
            self.sleeping.discard(tag)
        self.state["asleep"] = bool(self.sleeping)

    def reset_prefix_cache(self) -> bool:
        self.prefix_cache_resets += 1
        return True

    def _load_weights(self, weights) -> set[str]:
        if "weights" in self.sleeping:
            raise RuntimeError("load_weights into sleeping weights: wake_up(tags=['weights']) first")
        params = dict(self.model.named_parameters())
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in params:  # vllm/model_executor/models/utils.py `AutoWeightsLoader`
                    raise ValueError(f"There is no module or parameter named {name!r}")
                if params[name].shape != tensor.shape:
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} into {tuple(params[name].shape)}")
                params[name].copy_(tensor)
                loaded.add(name)
        self.loaded |= loaded
        if self.loaded >= set(params):  # every weight written since the level-2 sleep
            self.dropped = False
        CALLS.append({"load_weights": len(loaded)})
        return loaded

    def _model_for(self, request):
        if request is None:
            return self.model
        if not self.enable_lora:
            raise ValueError("LoRA request but the engine was built without enable_lora")
        if request.lora_int_id not in self.adapters:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.path)
            peft = PeftModel.from_pretrained(base, request.lora_path).eval()
            if peft.peft_config["default"].r > self.max_lora_rank:
                raise ValueError("adapter rank above max_lora_rank")
            self.adapters[request.lora_int_id] = peft
        return self.adapters[request.lora_int_id]

    @torch.no_grad()
    def generate(self, prompts: str | dict | Sequence[str | dict],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, use_tqdm: bool = True, lora_request=None) -> list[RequestOutput]:
        if self.asleep:
            raise RuntimeError("generate() on a sleeping engine: call wake_up() first")
        if self.dropped:
            raise RuntimeError("generate() after sleep(level=2) with no weights loaded: the engine would compute "
                               "with uninitialised memory")
        prompts = [prompts] if isinstance(prompts, (str, dict)) else list(prompts)
        params = (sampling_params if isinstance(sampling_params, (list, tuple))
                  else [sampling_params or SamplingParams()] * len(prompts))
        loras = lora_request if isinstance(lora_request, (list, tuple)) else [lora_request] * len(prompts)
        assert len(params) == len(prompts) == len(loras)
        CALLS.append({"generate": len(prompts), "loras": [r.lora_int_id if r else None for r in loras],
                      "prompt_token_ids": [self._ids(p) for p in prompts]})
        out = []
        for prompt, sp, lora in zip(prompts, params, loras):
            model = self._model_for(lora)
            ids = torch.tensor([self._ids(prompt)])
            enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            texts = []
            for i in range(sp.n):
                kwargs: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
                if sp.temperature > 0:
                    torch.manual_seed((sp.seed or 0) * 1000 + i)
                    kwargs = {"do_sample": True, "temperature": sp.temperature, "top_p": sp.top_p, "top_k": None}
                ids = model.generate(**enc, max_new_tokens=sp.max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                     **kwargs)
                text = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for stop in ([sp.stop] if isinstance(sp.stop, str) else sp.stop or []):
                    text = text.split(stop)[0]
                texts.append(text)
            out.append(RequestOutput(prompt if isinstance(prompt, str) else self.tokenizer.decode(self._ids(prompt)),
                                     [CompletionOutput(i, t) for i, t in enumerate(texts)]))
        return out

    def _ids(self, prompt: str | dict) -> list[int]:
        if isinstance(prompt, dict):
            if set(prompt) - {"prompt_token_ids", "prompt", "multi_modal_data", "mm_processor_kwargs"} or \
                    "prompt_token_ids" not in prompt:
                raise TypeError(f"not a TokensPrompt: keys {sorted(prompt)}")
            return list(prompt["prompt_token_ids"])
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt is a string or a TokensPrompt, got {type(prompt).__name__}")
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]  # as vLLM's input processor


class _Model:
    """What `llm_engine.model_executor.driver_worker.model_runner.model` exposes in-process."""

    def __init__(self, llm: LLM):
        self._llm = llm

    def load_weights(self, weights) -> set[str]:
        return self._llm._load_weights(weights)


class _ClientEngine:
    """The engine of a multiprocess V1 engine core: the model lives in another process."""


class _Engine:
    def __init__(self, llm: LLM):
        runner = type("ModelRunner", (), {"model": _Model(llm)})()
        worker = type("Worker", (), {"model_runner": runner})()
        self.model_executor = type("Executor", (), {"driver_worker": worker})()
