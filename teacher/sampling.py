"""The teacher: writes k self-edits per instance.

Each instance is sampled in one `generate` call with `num_return_sequences=k`, seeded from
(run seed, round, instance id), so a resumed or sharded run draws the same self-edits.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from seal.shared.config import SamplingConfig
from seal.shared.domain import DataError, Domain
from seal.shared.models import format_prompt, stated_decoding


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any printable parts (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "big") & 0x7FFFFFFF


def check_fits(positions: int | None, prompt_tokens: int, max_new_tokens: int, what: str) -> None:
    """A prompt that, with the tokens to generate, exceeds the teacher's `positions` (None: unknown) would be
    silently cut or produce garbage (transformers), or stop the vLLM engine's start; refuse it by name."""
    if positions and prompt_tokens + max_new_tokens > positions:
        raise DataError(f"the teacher prompt for {what!r} has {prompt_tokens} tokens, which with "
                        f"sampling.max_new_tokens {max_new_tokens} exceeds the teacher's {positions} positions: "
                        "shorten the instance or lower sampling.max_new_tokens")


@dataclass
class Samples:
    prompt: str
    texts: list[str]
    seconds: float


class Teacher:
    """Samples self-edits from a causal LM with transformers' `generate` (the `hf` backend)."""

    def __init__(self, model, tokenizer, sampling: SamplingConfig, domain: Domain, chat: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = sampling
        self.domain = domain
        self.chat = chat

    def prompt(self, instance: Any) -> str:
        """The full text the teacher model conditions on (chat-formatted when the model uses a template)."""
        return format_prompt(self.tokenizer, self.domain.teacher_prompt(instance), self.chat)

    @torch.no_grad()
    def sample(self, instances: Sequence[Any], k: int | None = None, round_: int = 0) -> list[Samples]:
        if self.model is None:
            raise RuntimeError("this teacher's weights were released after its round's sampling")
        k = k or self.cfg.k
        return [self._sample_one(inst, k, round_) for inst in instances]

    def _sample_one(self, instance: Any, k: int, round_: int) -> Samples:
        start = time.perf_counter()
        prompt = self.prompt(instance)
        tok = self.tokenizer
        enc = tok(prompt, return_tensors="pt", add_special_tokens=not self.chat).to(self.model.device)
        check_fits(getattr(self.model.config, "max_position_embeddings", None), enc["input_ids"].shape[1],
                   self.cfg.max_new_tokens, self.domain.describe(instance))
        torch.manual_seed(derive_seed(self.cfg.seed, round_, self.domain.instance_id(instance)))
        # In self mode this is the student's model; its LoRA slots are only active inside Student calls.
        with stated_decoding(self.model, tok):  # top_k off, as vLLM's: 0 disables it
            out = self.model.generate(**enc, do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                      top_k=0, max_new_tokens=self.cfg.max_new_tokens, num_return_sequences=k,
                                      pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return Samples(prompt=prompt, texts=[t.strip() for t in texts], seconds=time.perf_counter() - start)

