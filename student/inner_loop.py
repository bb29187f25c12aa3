"""The student: loads once, absorbs a self-edit through a fresh LoRA, and is scored without the context.

One peft LoRA adapter is injected into the base model when the student is built; every `absorb`
re-initialises it from the seed and trains it with a plain AdamW loop (dynamic padding, loss on
real tokens only, tokenisation cached per plan). Scoring generates greedily in one batch per instance.
The no-update baseline of an instance is measured with the adapter disabled, once per base weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from seal.shared.config import InnerConfig
from seal.shared.domain import Domain, Score, TrainingPlan
from seal.shared.models import fingerprint, format_prompt

ADAPTER = "default"


class InnerLoopError(RuntimeError):
    """The inner loop could not produce a usable update (e.g. a non-finite loss); recorded as a failure."""


@dataclass
class AbsorbStats:
    steps: int
    tokens: int
    first_loss: float
    last_loss: float
    seconds: float


@dataclass
class SeedOutcome:
    seed: int
    score: float
    reward: float
    absorb: AbsorbStats
    score_seconds: float
    details: list[dict[str, Any]] = field(default_factory=list)


class Student:
    """A base model with one re-usable LoRA slot. `absorb` trains it; `score`/`baseline` evaluate."""

    def __init__(self, model, tokenizer, inner: InnerConfig, domain: Domain, chat: bool):
        self.tokenizer = tokenizer
        self.inner = inner
        self.domain = domain
        self.chat = chat
        self.base_fingerprint = fingerprint(model)
        targets: Any = inner.target_modules
        if targets == ["all-linear"]:
            targets = "all-linear"
        lora = LoraConfig(r=inner.lora_r, lora_alpha=inner.lora_alpha, lora_dropout=inner.lora_dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(model, lora, adapter_name=ADAPTER)
        self.model.eval()
        self.lora_layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        self.lora_params = [p for n, p in self.model.named_parameters() if "lora_" in n]
        self.device = next(self.model.parameters()).device
        self.baselines: dict[tuple[str, str], Score] = {}

    # ------------------------------------------------------------------ training
    def _encode(self, plan: TrainingPlan) -> list[tuple[list[int], list[int]]]:
        tok, out = self.tokenizer, []
        for ex in plan.examples:
            chat = ex.chat and self.chat
            prompt = format_prompt(tok, ex.prompt, chat) if ex.prompt else ""
            prompt_ids = tok(prompt, add_special_tokens=not chat)["input_ids"] if prompt else []
            completion_ids = tok(ex.completion, add_special_tokens=not prompt_ids)["input_ids"]
            ids = (prompt_ids + completion_ids + [tok.eos_token_id])[: self.inner.max_length]
            labels = list(ids) if plan.loss_on_prompt else [-100] * len(prompt_ids) + ids[len(prompt_ids):]
            if any(label != -100 for label in labels[1:]):
                out.append((ids, labels[: len(ids)]))
        if not out:
            raise InnerLoopError("the training plan has no tokens to learn from")
        return out

    def _collate(self, batch: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, lab) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(seq)] = 1
        return {"input_ids": ids.to(self.device), "labels": labels.to(self.device),
                "attention_mask": mask.to(self.device)}

    def reset_adapter(self, seed: int) -> None:
        torch.manual_seed(seed)
        for layer in self.lora_layers:
            layer.reset_lora_parameters(ADAPTER, True)

    def absorb(self, plan: TrainingPlan, seed: int) -> AbsorbStats:
        """Train the LoRA slot from a fresh, seeded init on the plan; the adapter stays active for scoring."""
        start = time.perf_counter()
        data = self._encode(plan)
        self.reset_adapter(seed)
        lr = plan.lr if plan.lr is not None else self.inner.lr
        epochs = plan.epochs if plan.epochs is not None else self.inner.epochs
        optimizer = torch.optim.AdamW(self.lora_params, lr=lr, weight_decay=self.inner.weight_decay)
        order_rng = torch.Generator().manual_seed(seed)
        bs = self.inner.batch_size
        steps, tokens, losses = 0, 0, []
        self.model.train()
        try:
            for _ in range(epochs):
                order = torch.randperm(len(data), generator=order_rng).tolist()
                for i in range(0, len(order), bs):
                    batch = self._collate([data[j] for j in order[i: i + bs]])
                    loss = self.model(**batch).loss
                    if not torch.isfinite(loss):
                        raise InnerLoopError(f"non-finite training loss ({loss.item()}) at step {steps + 1}")
                    loss.backward()
                    if self.inner.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(self.lora_params, self.inner.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                    tokens += int(batch["attention_mask"].sum())
                    losses.append(loss.item())
        finally:
            self.model.eval()
        return AbsorbStats(steps=steps, tokens=tokens, first_loss=losses[0], last_loss=losses[-1],
                           seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n") -> list[str]:
        """Greedy answers for a batch of user messages, formatted with the student's chat template if any."""
        tok = self.tokenizer
        texts = [format_prompt(tok, p, self.chat) for p in prompts]
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat).to(self.device)
        extra = {"stop_strings": stop, "tokenizer": tok} if stop else {}
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, top_p=None,
                                  top_k=None, temperature=None, pad_token_id=tok.pad_token_id, **extra)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def score(self, instance: Any) -> Score:
        """Score with the adapter as it stands (after `absorb`)."""
        return self.domain.evaluate(instance, self.generate)

    def baseline(self, instance: Any) -> Score:
        """Score of the unmodified base model; measured once per (base weights, instance)."""
        key = (self.base_fingerprint, self.domain.instance_id(instance))
        if key not in self.baselines:
            with self.model.disable_adapter():
                self.baselines[key] = self.domain.evaluate(instance, self.generate)
        return self.baselines[key]

    def evaluate_plan(self, instance: Any, plan: TrainingPlan, seeds: Sequence[int]) -> list[SeedOutcome]:
        """Absorb the plan once per seed and score each update against the cached baseline."""
        base = self.baseline(instance).value
        outcomes = []
        for seed in seeds:
            stats = self.absorb(plan, seed)
            start = time.perf_counter()
            result = self.score(instance)
            outcomes.append(SeedOutcome(seed=seed, score=result.value, reward=result.value - base, absorb=stats,
                                        score_seconds=time.perf_counter() - start, details=result.details))
        return outcomes


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
