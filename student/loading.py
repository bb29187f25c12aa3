"""Building a Student: on a model already in memory (self mode shares the teacher's), or loaded for
teacher_student mode, whole on every rank or partitioned across ranks by DeepSpeed ZeRO-3."""

from __future__ import annotations

from seal.shared.config import InnerConfig, ModelConfig
from seal.shared.dist import Dist
from seal.shared.domain import Domain
from seal.shared.models import load_model, resolve, uses_chat_template
from seal.student.inner_loop import Student, lora_bank


def make_student(model, tokenizer, inner: InnerConfig, model_cfg: ModelConfig, domain: Domain) -> Student:
    """A Student on `model`, scoring through vLLM when `inner.score_backend: vllm`."""
    chat = uses_chat_template(model_cfg, tokenizer)
    bank = lora_bank(model, inner)
    scorer = None
    if inner.score_backend == "vllm":
        from seal.student.vllm_scoring import VLLMScorer

        # queries are at most a training sequence long (ARC's views), answers up to 30x30 grids
        context = getattr(model.config, "max_position_embeddings", None)
        scorer = VLLMScorer(resolve(model_cfg.name), tokenizer, domain, chat, inner.vllm_lora_rank, bank.slots,
                            inner.vllm, adapter_dtype=next(model.parameters()).dtype,
                            max_model_len=min(inner.max_length + 1024, context or inner.max_length + 1024),
                            revision=model_cfg.revision)
    return Student(model, tokenizer, inner, domain, chat, bank=bank, scorer=scorer)


def load_student(inner: InnerConfig, model_cfg: ModelConfig, domain: Domain, dist: Dist | None = None) -> Student:
    """teacher_student mode's fixed student: whole on every rank, or partitioned by DeepSpeed ZeRO-3
    across them (`inner.deepspeed`; every rank must call this together)."""
    if inner.deepspeed:
        from seal.student.partitioned import load_partitioned_student

        return load_partitioned_student(inner, model_cfg, domain, dist or Dist())
    model, tokenizer = load_model(model_cfg)
    return make_student(model, tokenizer, inner, model_cfg, domain)
