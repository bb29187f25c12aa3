"""Scoring many adapted students at once on vLLM (`inner.score_backend: vllm`, GPU).

The student trains its K adapters as usual; each is written in peft's format and served by one vLLM
engine with `enable_lora`, every query routed to its adapter by a `LoRARequest` (vLLM's multi-LoRA
batching). Greedy decoding, as the HF path.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Sequence

import torch

from seal.shared import vllm_engine
from seal.shared.domain import Domain, Score
from seal.shared.models import import_vllm, vllm_prompt


class VLLMScorer:
    def __init__(self, model_path: str, tokenizer, domain: Domain, chat: bool, max_lora_rank: int, max_loras: int,
                 engine_args: dict[str, Any], adapter_dtype=None, max_model_len: int | None = None,
                 revision: str | None = None):
        """`engine_args` (inner.vllm) take precedence over what SEAL derives (max_lora_rank, max_loras,
        max_model_len, the memory share); the config refuses those that would repeat `model`, `revision`
        or `enable_lora`. `revision`: the hub revision of `model_path` (the student's `revision`)."""
        self.vllm = import_vllm()
        from vllm.lora.request import LoRARequest

        self.LoRARequest = LoRARequest
        self.tokenizer, self.domain, self.chat = tokenizer, domain, chat
        # enable_lora: the config refuses it in inner.vllm; sized and placed by vllm_engine.engine_args, and
        # asleep between scorings, while the student trains (max_model_len from max_model_len below)
        args = vllm_engine.engine_args(engine_args, max_model_len=max_model_len, enable_lora=True,
                                       max_lora_rank=max_lora_rank, max_loras=max_loras,
                                       **({"revision": revision} if revision is not None else {}))
        self.max_model_len = args.get("max_model_len")
        self.llm = self.vllm.LLM(model=model_path, **args)
        self.sleeps = bool(args.get("enable_sleep_mode"))
        if self.sleeps:
            self.llm.sleep(level=1)
        # Adapters go to disk only to reach the engine: written in the engine's dtype (vLLM casts LoRA
        # weights to the model's anyway; fp32 would double the bytes: 323 MB per adapter at 7B r=32),
        # deleted once scored, so at most one chunk's adapters are on disk; the folder goes at exit.
        self.workdir = Path(tempfile.mkdtemp(prefix="seal-vllm-adapters-"))
        weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)
        self.adapter_dtype = adapter_dtype
        self.next_id = 1  # vLLM caches adapters by integer id: a new adapter needs a new id

    def close(self) -> None:
        """Delete the engine (woken first, `vllm_engine.dispose`): in mode self each round's student is a
        new checkpoint with a scoring engine of its own, and vLLM allows one sleep-mode engine per process."""
        if self.sleeps:
            vllm_engine.dispose(self)
        self.llm = None

    def score(self, instances: Sequence[Any], save_adapter, slots: Sequence[int | None]) -> list[Score]:
        """instances[i] answered by adapter slot slots[i] (None: the base model, no adapter);
        `save_adapter(slot, path, dtype)` writes a slot."""
        if self.llm is None:
            raise RuntimeError("this vLLM scorer was closed")
        prompts, params, rows, spans = [], [], [], []
        for inst, slot in zip(instances, slots):
            q = self.domain.queries(inst)
            sp = self.vllm.SamplingParams(temperature=0.0, max_tokens=q.max_new_tokens,
                                          stop=[q.stop] if q.stop else None)
            spans.append((len(prompts), len(q.prompts)))
            for p in q.prompts:
                prompts.append(vllm_prompt(self.tokenizer, p, self.chat))
                params.append(sp)
                rows.append(slot)
        limit = self.max_model_len
        for prompt, param in zip(prompts, params):  # before any adapter is written
            if limit is not None and len(prompt["prompt_token_ids"]) + param.max_tokens > limit:
                raise ValueError(f"a query of {len(prompt['prompt_token_ids'])} tokens plus {param.max_tokens} to "
                                 f"answer exceeds the scoring engine's max_model_len {limit} "
                                 "(set inner.vllm.max_model_len)")
        requests: dict[int | None, Any] = {None: None}
        written = []
        for slot in dict.fromkeys(s for s in slots if s is not None):  # one adapter per slot, however many rows
            path = self.workdir / f"adapter-{self.next_id}"
            written.append(path)
            save_adapter(slot, path, self.adapter_dtype)
            requests[slot] = self.LoRARequest(f"seal-{self.next_id}", self.next_id, str(path))
            self.next_id += 1
        loras = [requests[slot] for slot in rows]
        if self.sleeps:
            torch.cuda.empty_cache()  # what training left in torch's cache goes back before the engine wakes
            self.llm.wake_up()
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=loras)
        finally:  # loaded into the engine by now (an id is never reused, so never read again)
            for path in written:
                shutil.rmtree(path, ignore_errors=True)
            if self.sleeps:
                self.llm.sleep(level=1)
        texts = [o.outputs[0].text for o in outputs]
        return [self.domain.grade(inst, texts[a: a + n]) for inst, (a, n) in zip(instances, spans)]
