"""The vLLM teacher backend: the same `sample` as `Teacher`, on vLLM's offline engine (GPU).

`sampling.backend: vllm` selects it; `sampling.vllm` passes engine arguments to `vllm.LLM` (for example
`gpu_memory_utilization`, `tensor_parallel_size`). One engine is built per teacher checkpoint, so a
ReST-EM round's updated teacher is picked up by the next round's session. Every instance's request
carries its own seed (the same derivation as the HF backend), so batching does not change what is drawn.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from seal.shared.config import SamplingConfig
from seal.shared.domain import Domain
from seal.shared.models import format_prompt, import_vllm, vllm_prompt
from seal.teacher.sampling import Samples, derive_seed


class VLLMTeacher:
    def __init__(self, model_path: str, tokenizer, sampling: SamplingConfig, domain: Domain, chat: bool):
        vllm = import_vllm()
        self.vllm = vllm
        self.tokenizer, self.cfg, self.domain, self.chat = tokenizer, sampling, domain, chat
        self.llm = vllm.LLM(model=model_path, seed=sampling.seed, **sampling.vllm)  # the config refuses a 2nd seed

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
        inputs = [vllm_prompt(self.tokenizer, self.domain.teacher_prompt(i), self.chat) for i in instances]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        seconds = (time.perf_counter() - start) / max(1, len(instances))
        return [Samples(prompt=p, texts=[c.text.strip() for c in out.outputs], seconds=seconds)
                for p, out in zip(prompts, outputs)]
