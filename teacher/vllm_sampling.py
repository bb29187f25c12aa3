"""The vLLM teacher backend: the same `sample` as `Teacher`, on vLLM's offline engine (GPU).

`sampling.backend: vllm` selects it; `sampling.vllm` passes engine arguments to `vllm.LLM` (for example
`gpu_memory_utilization`, `tensor_parallel_size`). A run keeps one engine for its teachers: once a teacher
has drawn its samples the engine sleeps, and the next teacher checkpoint (a ReST-EM round's update, an
evaluation condition's teacher) is loaded into it (`seal.shared.vllm_engine.teacher_engine`). Every instance's request
carries its own seed (the same derivation as the HF backend), so batching does not change what is drawn.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from seal.shared.config import SamplingConfig
from seal.shared.domain import Domain
from seal.shared.models import format_prompt, import_vllm, vllm_prompt
from seal.shared.vllm_engine import context_length, engine_args, release, teacher_engine
from seal.teacher.sampling import Samples, check_fits, derive_seed


class VLLMTeacher:
    """`revision`: the hub revision of `model_path` (`teacher.revision`). `instances`: those it will sample
    for, if known; the engine's max_model_len is then the longest of
    their prompts plus max_new_tokens (rather than the model's whole context, whose KV cache may not fit).
    The engine is sized and placed by `seal.shared.vllm_engine.engine_args` and shared between the run's
    teachers (`teacher_engine`); `release()` puts it to sleep once this teacher's samples are drawn (a
    round's teacher and an evaluation teacher sample once), for the next teacher checkpoint to be loaded
    into rather than a new engine started."""

    def __init__(self, model_path: str, tokenizer, sampling: SamplingConfig, domain: Domain, chat: bool,
                 instances: Sequence[Any] = (), revision: str | None = None):
        vllm = import_vllm()
        self.vllm = vllm
        self.tokenizer, self.cfg, self.domain, self.chat = tokenizer, sampling, domain, chat
        lengths = [len(self._input(i)["prompt_token_ids"]) for i in instances]
        if lengths:  # before the engine: vLLM refuses a max_model_len beyond the model's context
            positions = context_length(model_path, revision)
            for inst, n in zip(instances, lengths):
                check_fits(positions, n, sampling.max_new_tokens, domain.describe(inst))
        self.max_model_len = max(lengths) + sampling.max_new_tokens if lengths else None
        # seed: the config refuses a second one in sampling.vllm
        args = engine_args(sampling.vllm, max_model_len=self.max_model_len, seed=sampling.seed)
        # the run's engine from an earlier teacher, with this checkpoint's weights loaded, or a new one
        self.engine = teacher_engine(vllm, model_path, args, revision)
        self.sleeps, self.released = bool(args.get("enable_sleep_mode")), False

    @property
    def llm(self) -> Any:
        """The engine's `vllm.LLM` (None once a later teacher needed the engine deleted)."""
        return self.engine.llm

    def _input(self, instance: Any) -> dict[str, list[int]]:
        return vllm_prompt(self.tokenizer, self.domain.teacher_prompt(instance), self.chat)

    def release(self) -> None:
        """Sleep at level 2 (weights and KV cache dropped, no host copy kept) where the engine has sleep
        mode, and hand it back for the run's next teacher; this teacher samples no more."""
        if self.sleeps and not self.released:
            release(self.engine)
        self.released = True

    def prompt(self, instance: Any) -> str:
        return format_prompt(self.tokenizer, self.domain.teacher_prompt(instance), self.chat)

    def sample(self, instances: Sequence[Any], k: int | None = None, round_: int = 0) -> list[Samples]:
        k = k or self.cfg.k
        start = time.perf_counter()
        prompts = [self.prompt(i) for i in instances]  # what the SFT data records as the prompt
        params = [self.vllm.SamplingParams(n=k, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                           max_tokens=self.cfg.max_new_tokens,
                                           seed=derive_seed(self.cfg.seed, round_, self.domain.instance_id(i)))
                  for i in instances]
        inputs = [self._input(i) for i in instances]
        limit = self.engine.max_model_len  # a reused engine's may be longer than this teacher's prompts need
        for inst, ids in zip(instances, inputs):
            if limit is not None and len(ids["prompt_token_ids"]) + self.cfg.max_new_tokens > limit:
                raise ValueError(f"the teacher prompt of {self.domain.describe(inst)} has "
                                 f"{len(ids['prompt_token_ids'])} tokens: with sampling.max_new_tokens it exceeds "
                                 f"the engine's max_model_len {limit}")
        if self.released:
            raise RuntimeError("this vLLM teacher was released after its sampling")
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        seconds = (time.perf_counter() - start) / max(1, len(instances))
        return [Samples(prompt=p, texts=[c.text.strip() for c in out.outputs], seconds=seconds)
                for p, out in zip(prompts, outputs)]
