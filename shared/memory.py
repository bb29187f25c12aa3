"""What each phase of a run needs in device memory, from the models' configs alone.

A model is built on the `meta` device (no weights are read or allocated) to count its parameters and
the sizes of the linear layers LoRA wraps; the rest is arithmetic over the run's config. The figures
are estimates with stated terms, not measurements: weights, LoRA slots and their optimizer, the
activations a backward pass keeps, the logits and the loss over the vocabulary, the KV cache of a
generation. They have not been calibrated against a GPU's allocator yet (no GPU has run this code):
read them as the plan's arithmetic, with the 10 % headroom `recipes/plan.py` keeps. `recipes/plan.py`
prints them per phase; `auto_slots` uses the inner-loop term to choose how many adapters train at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

GB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


@dataclass
class ModelShape:
    """What the estimates need of a causal LM."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    """num_key_value_heads × head_dim: one token's K (or V) in one layer."""
    vocab: int
    linears: list[tuple[str, int, int]] = field(default_factory=list)
    """(module name, in_features, out_features) of every linear layer but the output embedding."""

    def lora_params(self, r: int, targets: Sequence[str]) -> int:
        """Parameters of one rank-r adapter over `targets` (module names' last part, or all-linear)."""
        every = list(targets) == ["all-linear"]
        return sum(r * (i + o) for name, i, o in self.linears if every or name.split(".")[-1] in targets)

    def weight_bytes(self, dtype: str) -> int:
        return self.params * DTYPE_BYTES.get(dtype, 2)

    def activation_bytes(self, tokens: int, dtype: str) -> int:
        """What a backward pass through every layer keeps per token (LoRA or not, the frozen layers'
        inputs are needed to carry the gradient down): per layer the norm inputs, q, k, v, the attention
        output, the MLP's input and its four intermediate-size tensors (SDPA's fused kernels keep no
        score matrix)."""
        per_layer = 6 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate
        return tokens * self.layers * per_layer * DTYPE_BYTES.get(dtype, 2)

    def checkpointed_activation_bytes(self, tokens: int, dtype: str) -> int:
        """With gradient checkpointing: each layer's input, plus one layer recomputed at a time."""
        b = DTYPE_BYTES.get(dtype, 2)
        return tokens * self.layers * self.hidden * b + self.activation_bytes(tokens, dtype) // self.layers

    def logits_bytes(self, tokens: int, dtype: str) -> int:
        """The loss over the vocabulary at its backward peak: the logits and their gradient in the model's
        dtype, the fp32 copy, the saved log-softmax and the fp32 gradient."""
        return tokens * self.vocab * (2 * DTYPE_BYTES.get(dtype, 2) + 4 + 4 + 4)

    def lora_input_bytes(self, tokens: int, r: int, targets: Sequence[str], dtype: str) -> int:
        """What the adapters keep for backward beyond the frozen layers: each targeted layer's input cast
        to the bank's fp32 (a copy unless the model is fp32 already) and its rank-r projection."""
        every = list(targets) == ["all-linear"]
        chosen = [(i, o) for name, i, o in self.linears if every or name.split(".")[-1] in targets]
        copies = 0 if dtype == "float32" else sum(i for i, _ in chosen)
        return tokens * (copies + len(chosen) * r) * 4

    def kv_bytes(self, tokens: int, dtype: str) -> int:
        """A generation's KV cache: K and V of every layer for every token held."""
        return 2 * tokens * self.layers * self.kv_dim * DTYPE_BYTES.get(dtype, 2)


def shape_of(config) -> ModelShape:
    """Count a model built from a transformers config on the meta device (nothing is allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return shape_of_model(model)


def shape_of_model(model: nn.Module) -> ModelShape:
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [(name.removesuffix(".base"), m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and m is not out_emb]  # (a LoRA-wrapped layer's own is `.base`)
    params = sum(p.numel() for n, p in model.named_parameters() if "lora" not in n and "bank" not in n)
    return ModelShape(params=params, layers=text.num_hidden_layers, hidden=text.hidden_size,
                      intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
                      kv_dim=getattr(text, "num_key_value_heads", heads) * head_dim, vocab=text.vocab_size,
                      linears=linears)


def bank_bytes(shape: ModelShape, slots: int, r: int, targets: Sequence[str], training: bool) -> int:
    """The fp32 LoRA bank of `slots` adapters; while training also its gradient, the two AdamW moments and
    the optimizer's one temporary (student/multi_lora.py SlotAdamW.step)."""
    return slots * shape.lora_params(r, targets) * 4 * (5 if training else 1)


def row_tokens(batch_size: int, max_length: int, max_row_tokens: int | None) -> int:
    """The longest packed row a training pass can see: a batch of batch_size sequences of up to
    max_length tokens, cut at max_row_tokens (a longer single sequence still makes its own row)."""
    return max(max_length, min(batch_size * max_length, max_row_tokens or batch_size * max_length))


def inner_loop_bytes(shape: ModelShape, slots: int, row: int, r: int, targets: Sequence[str], dtype: str,
                     checkpointing: bool = False, dense_mask: bool = False) -> int:
    """One training pass of `slots` packed rows of `row` tokens each, beyond the weights: the bank and its
    optimizer, activations (or, checkpointed, each layer's input and one layer's), logits and loss, and
    the block-diagonal attention mask (one byte per pair of positions of a row, transformers' boolean
    mask; `dense_mask`: inner.train_on_padding's additive mask, in the model's dtype; a pass of batches of
    unequal lengths may run as one row of all of them, student/inner_loop.py `_packs`)."""
    tokens = slots * row
    acts = shape.checkpointed_activation_bytes(tokens, dtype) if checkpointing else shape.activation_bytes(
        tokens, dtype) + shape.lora_input_bytes(tokens, r, targets, dtype)
    return (bank_bytes(shape, slots, r, targets, training=True) + acts + shape.logits_bytes(tokens, dtype)
            + tokens * tokens * (DTYPE_BYTES.get(dtype, 2) if dense_mask else 1))


def auto_slots(model: nn.Module, row: int, r: int, targets: Sequence[str], dtype: str, free: int,
               checkpointing: bool = False, cap: int = 16, dense_mask: bool = False) -> int:
    """The most adapters (at most `cap`) whose training pass fits in 90 % of `free` bytes, at least 1."""
    shape = shape_of_model(model)
    fits = [k for k in range(1, cap + 1)
            if inner_loop_bytes(shape, k, row, r, targets, dtype, checkpointing, dense_mask) <= 0.9 * free]
    return max(fits, default=1)
