"""Arguments for a vLLM engine that shares its GPU with the run's transformers models and processes.

vLLM's defaults assume it owns the GPU: it reserves `gpu_memory_utilization` (0.92) of the device's
*total* memory and fails at start-up when that much is not free (vllm/v1/worker/utils.py `request_memory`), then
sizes its KV cache for `max_model_len`, by default the model's whole context (131072 for Llama 3.2),
and fails when that does not fit. Under `accelerate launch` its single-process executor puts every
rank's engine on the first GPU. So SEAL sizes the engine from what this run needs and what is free, and
uses vLLM's `external_launcher` backend, as TRL's colocate mode does (trl/generation/vllm_generation.py),
so each rank's engine lives on that rank's GPU and runs in its process. The user's engine
arguments (`sampling.vllm`, `inner.vllm`) take precedence over every value chosen here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from seal.shared.models import free_memory

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
    if memory is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # as TRL's colocate mode, whatever the number of processes: the engine core runs in this process
        # (its model reachable for weight reloads) on this rank's GPU
        args["distributed_executor_backend"] = "external_launcher"
        _launcher_env()
    return {**args, **user}


def check_engine_args(section: str, args: dict[str, Any]) -> None:
    """Refuse a name vLLM's `EngineArgs` lacks at start-up, where vLLM is installed: `vllm.LLM` builds
    `EngineArgs(**kwargs)` (vllm/entrypoints/llm.py), so a misspelt `sampling.vllm` / `inner.vllm` key was
    a TypeError once the run's models had loaded."""
    if not args:
        return
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:  # not installed here: the backend's own check says so when it starts
        return

    from seal.shared.config import ConfigError

    names = {f.name for f in dataclasses.fields(EngineArgs)}
    for key in args:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=3)
            raise ConfigError(f"{section}.{key}: vLLM's EngineArgs has no argument {key!r}"
                              + (f" (did you mean {', '.join(close)}?)" if close else ""))


def _launcher_env() -> None:
    """The torch.distributed variables external_launcher reads (env:// rendezvous), for a run that was not
    started by a launcher: a single process (as TRL's colocate mode sets them, trl/trainer/utils.py
    ensure_master_addr_port)."""
    import socket

    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])


# ---------------------------------------------------------------- one teacher engine per run

_VOLATILE_CONFIG = ("_name_or_path", "transformers_version", "use_cache")
"""config keys that differ between checkpoints of one model without changing what it computes."""

DERIVED_ARGS = ("seed", "max_model_len", "gpu_memory_utilization")
"""Engine arguments that do not split engines: the per-request seeds decide what is drawn, a longer
max_model_len serves shorter prompts, and the memory share is sized from what is free at the moment
(an engine asleep still holds its context, so the share differs from one teacher to the next)."""


def model_config(model_path: str, revision: str | None = None) -> Any:
    """The model's config as transformers reads it (a local directory, or the hub at `revision`), as vLLM
    reads it for the engine."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path, revision=revision)


_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
"""The config keys vLLM derives a model's length from, the smallest present winning, model_max_length
overriding (vllm/transformers_utils/model_arch_config_convertor.py `derive_max_model_len_and_key`)."""


def context_length(model_path: str, revision: str | None = None) -> int | None:
    """The longest max_model_len vLLM accepts for this generative model without
    VLLM_ALLOW_LONG_MAX_MODEL_LEN (which it warns gives NaNs or out-of-bounds reads), as
    vllm/config/model.py `_get_and_verify_max_len` derives it from the config (the tokenizer's
    model_max_length caps only pooling models there). vLLM then multiplies it by some RoPE scalings'
    factor, which this leaves out: never above what vLLM accepts. None: the config names no length."""
    config = model_config(model_path, revision)
    if getattr(config, "model_max_length", None):
        return int(config.model_max_length)
    lengths = [getattr(config, key) for key in _LENGTH_KEYS if getattr(config, key, None) is not None]
    return int(min(lengths)) if lengths else None


def architecture(model_path: str, revision: str | None = None) -> str:
    """What an engine's weights must match: the model's config as transformers reads it (local or hub, with
    the defaults of this transformers version), less the keys a save rewrites; its dtype stays, so a
    reused engine computes as a fresh one on that checkpoint would."""
    config = model_config(model_path, revision).to_dict()
    return json.dumps({k: v for k, v in config.items() if k not in _VOLATILE_CONFIG}, sort_keys=True, default=str)


def checkpoint_files(model_path: str, revision: str | None = None) -> list[Path]:
    """The checkpoint's weight files, as transformers finds them: the shards its index names, else
    model.safetensors (not every *.safetensors: an adapter or a consolidated copy may sit beside them).
    A hub name is read from its local snapshot at `revision` (a local directory has none)."""
    root = Path(model_path)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(model_path, revision=revision, allow_patterns=["*.safetensors", "*.json"]))
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return [root / f for f in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
    if (root / "model.safetensors").is_file():
        return [root / "model.safetensors"]
    raise FileNotFoundError(f"{model_path} has no model.safetensors (or index) to load into the vLLM engine")


def checkpoint_weights(model_path: str, revision: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in the checkpoint's own (transformers) names, one tensor at a time, as vLLM's model
    `load_weights` takes them (its default loader feeds it the same names from the same files)."""
    from safetensors import safe_open

    for file in checkpoint_files(model_path, revision):
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
"""The run's teacher engine, idle or busy (one with sleep mode: only it can hand memory back). One at a
time: vLLM allows one sleep-mode engine per process (`dispose`)."""


def dispose(owner: Any, attr: str = "llm") -> None:
    """Delete the sleep-mode engine at `owner.attr`, so that another can be built. vLLM allows one
    sleep-mode engine per process (vllm-project/vllm#18975): its memory pool is process-wide
    (vllm/device_allocator/cumem.py `CuMemAllocator.get_instance`), an engine asleep still counts in it,
    and a sleep-mode worker asserts it is empty when it loads its weights
    (vllm/v1/worker/gpu_worker.py `_maybe_get_memory_pool_context`). Woken first: the pool frees an
    allocation by unmapping it, which sleep has done already; then collected (an LLM holds reference
    cycles), and torch's cache emptied. The caller holds no other reference to the engine."""
    llm = getattr(owner, attr)
    setattr(owner, attr, None)
    if llm is None:
        return
    try:
        llm.wake_up()
    finally:
        del llm
        free_memory()


def teacher_engine(vllm: Any, model_path: str, args: dict[str, Any], revision: str | None = None) -> _Engine:
    """A vLLM engine serving the teacher checkpoint at `model_path`: the run's idle engine for a model of
    the same architecture and engine arguments (DERIVED_ARGS aside) when there is one, with the
    checkpoint's weights loaded into it, else a new one. ReST-EM writes a new teacher every round and the
    evaluation samples several; each used to get its own engine, a start-up each (weights, CUDA graphs),
    and whether a deleted engine's memory comes back entirely is not measured here (no GPU). The reload
    follows TRL's colocate weight sync (trl/generation/vllm_generation.py `sync_weights`): empty torch's
    cache, wake the weights only, `load_weights` on the in-process model, then the KV cache, and reset the
    prefix cache (cached prefixes hold the old weights' keys). vLLM allows one sleep-mode engine per
    process (`dispose`): an idle engine that cannot serve (too short for the new prompts, or another
    architecture or engine arguments) is deleted before the new one is built, long enough for both; a new
    one while the run's engine still samples is an error. `revision`: the hub revision of `model_path` (the
    checkpoint's, like the path: it does not split engines; vLLM ignores it for a local directory, as
    transformers does)."""
    if revision is not None:
        args = {**args, "revision": revision}
    if not args.get("enable_sleep_mode"):  # it cannot give its memory back between teachers: not shared
        return _Engine(vllm.LLM(model=model_path, **args), "", args.get("max_model_len"))
    key = json.dumps({"model": architecture(model_path, revision),
                      "args": {k: v for k, v in args.items() if k not in (*DERIVED_ARGS, "revision")}},
                     sort_keys=True, default=str)
    need = args.get("max_model_len")
    for engine in [e for e in _ENGINES if e.key == key and not e.in_use]:
        if engine.max_model_len is None or (need is not None and need <= engine.max_model_len):
            _load(engine, model_path, revision)
            engine.in_use = True
            return engine
        if need is not None:
            need = max(need, engine.max_model_len)
            args = {**args, "max_model_len": need}
    if any(e.in_use for e in _ENGINES):
        raise RuntimeError("a second vLLM teacher engine while the run's engine still samples: vLLM allows one "
                           "sleep-mode engine per process (release the first teacher before the next)")
    for engine in list(_ENGINES):
        _ENGINES.remove(engine)
        dispose(engine)
    engine = _Engine(vllm.LLM(model=model_path, **args), key, need)
    _ENGINES.append(engine)
    return engine


def _load(engine: _Engine, model_path: str, revision: str | None = None) -> None:
    llm, model = engine.llm, None
    try:
        torch.cuda.empty_cache()  # what training left in torch's cache goes back before the weights wake
        llm.wake_up(tags=["weights"])
        # the in-process model: engine_args builds sleep-mode engines with the external_launcher backend,
        # which runs the V1 engine core in this process (vllm/v1/engine/llm_engine.py), as TRL's colocate mode
        model = llm.llm_engine.model_executor.driver_worker.model_runner.model
        model.load_weights(checkpoint_weights(model_path, revision))
        llm.wake_up(tags=["kv_cache"])
        llm.reset_prefix_cache()
    except BaseException:  # half-loaded weights must never serve a teacher: out of the pool, deleted
        _ENGINES.remove(engine)
        del llm, model  # no reference of ours may keep the engine alive (the traceback holds this frame)
        try:
            dispose(engine)
        except Exception:  # noqa: BLE001 (the load's own error is the one to report)
            pass
        raise


def release(engine: _Engine) -> None:
    """Sleep at level 2 (weights and KV cache dropped, no host copy) and hand the engine back to the run
    for the next teacher checkpoint."""
    engine.llm.sleep(level=2)
    engine.in_use = False
