"""K LoRA adapters that train and generate in one pass, each batch row routed to its own adapter.

peft trains one adapter per forward pass (its mixed-adapter batches are inference-only), so the
inner loop would pay one full base-model pass per self-edit. Here every targeted `nn.Linear` gains
stacked adapter weights; a forward pass over `K_active × b` rows runs the frozen base once and adds
`B_k A_k x` with two batched matmuls per layer. All slots' A and B live in one flat `[slots, P]`
parameter, so a vectorised AdamW, per-slot gradient clipping and per-slot learning rates are a
handful of tensor ops per step. A slot initialises exactly like peft's default LoRA (A kaiming-uniform,
B zero) and exports to peft's adapter format, so a trained self-edit can be saved and loaded with peft.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn


@dataclass
class _Slice:
    a: tuple[int, int]
    b: tuple[int, int]


class MultiLoRALinear(nn.Module):
    """Wraps a frozen linear layer; `bank.route` selects which slots the current rows use."""

    def __init__(self, base: nn.Linear, bank: "LoRABank", where: _Slice, index: int):
        super().__init__()
        self.base = base
        self.where = where
        self.index = index
        object.__setattr__(self, "bank", bank)  # not a submodule: the bank owns the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        bank = self.bank
        if bank.route is None:
            return y
        a_t, b_t = bank.views[self.index]  # [K, in, r], [K, r, out]
        ka = a_t.shape[0]
        same_dtype = y.dtype == a_t.dtype
        xa = x.reshape(ka, -1, x.shape[-1]) if bank.segments is None else x.reshape(-1, x.shape[-1])
        xa = xa if same_dtype else xa.to(a_t.dtype)  # cast first: dropout in the adapters' dtype, as peft
        if bank.dropout and self.training:
            xa = nn.functional.dropout(xa, bank.dropout)
        if bank.segments is not None:  # one row of every group's tokens: group i's run of them to slot i
            # (split, not slicing: the backward of split concatenates, where slices would each fill a
            # zero gradient of the whole input)
            one = ka == 1  # every segment on one slot: its single view
            delta = torch.cat([torch.mm(torch.mm(part, a_t[0 if one else i]), b_t[0 if one else i])
                               for i, part in enumerate(torch.split(xa, bank.segments))]) * bank.scaling
            return y + delta.view(y.shape).to(y.dtype)
        if same_dtype:  # an fp32 model (the CPU path): y + scaling·(x Aᵀ) Bᵀ in two kernels, fewer launches
            return torch.baddbmm(y.reshape(ka, -1, y.shape[-1]), torch.bmm(xa, a_t), b_t,
                                 alpha=bank.scaling).view(y.shape)
        # a bf16 model over the fp32 bank (GPU recipes): the delta in fp32, added in the model's dtype
        delta = torch.bmm(torch.bmm(xa, a_t), b_t) * bank.scaling
        return y + delta.reshape(y.shape).to(y.dtype)


def _targets(model: nn.Module, target_modules: Sequence[str]) -> list[str]:
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is out_emb:
            continue
        if list(target_modules) == ["all-linear"] or name.split(".")[-1] in target_modules:
            names.append(name)
    if not names:
        raise ValueError(f"target_modules {list(target_modules)} match no linear layer of the model")
    return names


class LoRABank(nn.Module):
    """`slots` LoRA adapters of rank r over the targeted linear layers of `model` (modified in place)."""

    def __init__(self, model: nn.Module, slots: int, r: int, alpha: float, dropout: float,
                 target_modules: Sequence[str], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.slots, self.r, self.scaling, self.dropout = slots, r, alpha / r, dropout
        self.route: torch.Tensor | None = None
        self.segments: list[int] | None = None
        self.views: list[tuple[torch.Tensor, torch.Tensor]] = []
        # The model owns its wrapped layers and each layer the bank; the bank only points back weakly, so
        # no reference cycle keeps a dropped model's weights alive until the next full collection (which
        # would come too late before the teacher SFT loads the next model).
        self._layers: list[tuple[str, weakref.ref[MultiLoRALinear]]] = []
        offset = 0
        device = next(model.parameters()).device
        for name in _targets(model, target_modules):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            base: nn.Linear = getattr(parent, child)
            a = (offset, offset + r * base.in_features)
            b = (a[1], a[1] + base.out_features * r)
            offset = b[1]
            layer = MultiLoRALinear(base, self, _Slice(a, b), len(self._layers))
            setattr(parent, child, layer)
            self._layers.append((name, weakref.ref(layer)))
        self.weights = nn.Parameter(torch.zeros(slots, offset, device=device, dtype=dtype))
        self._sizes = [n for _, layer in self.layers for n in (layer.where.a[1] - layer.where.a[0],
                                                                layer.where.b[1] - layer.where.b[0])]

    @property
    def layers(self) -> list[tuple[str, MultiLoRALinear]]:
        """(module name, wrapped layer) in module order."""
        out = []
        for name, ref in self._layers:
            layer = ref()
            if layer is None:
                raise RuntimeError("the model this LoRA bank wraps has been deleted")
            out.append((name, layer))
        return out

    @property
    def size(self) -> int:
        """Trainable parameters per adapter."""
        return self.weights.shape[1]

    @contextlib.contextmanager
    def routed(self, slots: Sequence[int] | None, segments: Sequence[int] | None = None) -> Iterator[None]:
        """Rows of the passes inside are grouped by slot: rows [i*b:(i+1)*b] use `slots[i]` (slots may
        repeat). With `segments`, the tokens (rows flattened) are: the first segments[0] to slots[0], the
        next segments[1] to slots[1], ... None: the plain base model. Each layer's A and B are cut from the
        routed weights by one `split` here, so the backward pass gathers every layer's gradient with a
        single concatenation (slicing per layer would materialise a full-size gradient per layer). Every
        group on one slot (CPT's adapter answering every held-out instance) is one group of all the rows
        (no copy of the slot per group, which at 7B would be a slot's size per instance of the batch; on
        this CPU the same speed, measured within 2 %)."""
        previous = (self.route, self.views, self.segments)
        if segments is not None and (slots is None or len(segments) != len(slots)):
            raise ValueError(f"segments {list(segments)} need one slot each, got slots {slots}")
        self.segments = list(segments) if segments is not None else None
        if slots is None:
            self.route, self.views = None, []
        else:
            slots = list(slots)
            self.route = torch.as_tensor(slots, device=self.weights.device)
            if slots == list(range(self.slots)):
                flat = self.weights
            elif len(set(slots)) == 1:
                flat = self.weights[slots[0]:slots[0] + 1]
            else:
                flat = self.weights.index_select(0, self.route)
            parts = torch.split(flat, self._sizes, dim=1)
            k = flat.shape[0]
            # each layer's A and B as the matmuls take them, transposed views made once per routing
            self.views = [(a.view(k, self.r, layer.base.in_features).transpose(1, 2),
                           b.view(k, layer.base.out_features, self.r).transpose(1, 2))
                          for (a, b), (_, layer) in zip(zip(parts[0::2], parts[1::2]), self.layers)]
        try:
            yield
        finally:
            self.route, self.views, self.segments = previous

    @torch.no_grad()
    def reset(self, slot: int, seed: int) -> None:
        """Initialise one slot as peft does (A: kaiming-uniform(a=√5) per layer in module order, B: 0).
        The draws come from a private CPU generator seeded with `seed` (peft's distribution, not its draws:
        peft's layer constructors consume the global RNG first): seeding the global RNG would also reseed
        every CUDA generator (torch/random.py manual_seed), restarting the sampling streams of whatever
        runs next."""
        gen = torch.Generator().manual_seed(seed)
        row = self.weights[slot]
        for _, layer in self.layers:
            a0, a1 = layer.where.a
            a = torch.empty(self.r, layer.base.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
            row[a0:a1] = a.flatten().to(row)
            row[layer.where.b[0]:layer.where.b[1]] = 0

    @torch.no_grad()
    def merge(self, slot: int) -> None:
        """Add one slot's update into the wrapped base weights (W += scaling · B A), as peft's
        `merge_and_unload` does: the model keeps the update with the adapters off."""
        row = self.weights[slot]
        for _, layer in self.layers:
            a = row[slice(*layer.where.a)].view(self.r, layer.base.in_features)
            b = row[slice(*layer.where.b)].view(layer.base.out_features, self.r)
            layer.base.weight += (self.scaling * (b @ a)).to(layer.base.weight.dtype)

    @torch.no_grad()
    def load_slot(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        """The inverse of `peft_state_dict`: set one slot from a saved adapter."""
        row = self.weights[slot]
        for name, layer in self.layers:
            row[slice(*layer.where.a)] = state[f"base_model.model.{name}.lora_A.weight"].flatten().to(row)
            row[slice(*layer.where.b)] = state[f"base_model.model.{name}.lora_B.weight"].flatten().to(row)

    def base_weights(self) -> list[torch.Tensor]:
        """Copies of the wrapped layers' base weights in host memory (to undo merges with `restore_base`;
        on a GPU a second device copy of every targeted weight would halve what the model may use)."""
        return [layer.base.weight.detach().to("cpu", copy=True) for _, layer in self.layers]

    @torch.no_grad()
    def restore_base(self, saved: list[torch.Tensor]) -> None:
        for (_, layer), weight in zip(self.layers, saved, strict=True):
            layer.base.weight.copy_(weight)

    def peft_state_dict(self, slot: int) -> dict[str, torch.Tensor]:
        """One slot in peft's LoRA adapter layout (`base_model.model.<layer>.lora_A.weight`, ...)."""
        row = self.weights[slot].detach()
        out = {}
        for name, layer in self.layers:
            out[f"base_model.model.{name}.lora_A.weight"] = row[slice(*layer.where.a)].view(
                self.r, layer.base.in_features).clone()
            out[f"base_model.model.{name}.lora_B.weight"] = row[slice(*layer.where.b)].view(
                layer.base.out_features, self.r).clone()
        return out


class SlotAdamW:
    """AdamW over the bank's `[slots, P]` weights with a per-slot learning rate, step count, gradient-norm
    clip and an active mask (a slot with no rows this step is not moved). Matches torch.optim.AdamW."""

    def __init__(self, bank: LoRABank, betas=(0.9, 0.999), eps: float = 1e-8):
        self.bank = bank
        self.b1, self.b2 = betas
        self.eps = eps
        w = bank.weights
        self.m = torch.zeros_like(w)
        self.v = torch.zeros_like(w)
        self.steps = torch.zeros(bank.slots, 1, device=w.device, dtype=w.dtype)

    @torch.no_grad()
    def step(self, lr: torch.Tensor, weight_decay: float, max_grad_norm: float, active: torch.Tensor) -> None:
        """`lr` and `active` are `[slots, 1]`; inactive rows keep their weights and moments. In place, with
        one bank-sized temporary: the peak is weights, gradient, two moments and that one (five bank
        copies; a 72B student's bank at K=4 is ~7 GB each)."""
        w, g = self.bank.weights, self.bank.weights.grad
        g.masked_fill_(active <= 0, 0.0)  # a failed slot's NaN gradient must not reach its moments either
        # clipping per slot (a row of the flat weights is one adapter), as a separate optimizer per
        # self-edit would: one diverging adapter must not shrink the others' steps
        if max_grad_norm:
            norms = g.norm(dim=1, keepdim=True)
            g.mul_((max_grad_norm / (norms + 1e-6)).clamp(max=1.0))
        # each slot counts its own steps for the bias correction: slots that sat out a step (a shorter
        # plan) are at a different t than the others
        self.steps += active
        t = self.steps.clamp(min=1)
        # inactive rows: decay factor 1 and no gradient term, so their moments stay as they were
        self.m.mul_(torch.where(active > 0, self.b1, 1.0)).addcmul_(g, (1 - self.b1) * active)
        self.v.mul_(torch.where(active > 0, self.b2, 1.0))
        tmp = torch.mul(g, g)
        self.v.addcmul_(tmp, (1 - self.b2) * active)
        step_size = lr / (1 - self.b1 ** t)
        torch.sqrt(self.v, out=tmp)  # the denominator, then the update, in the same buffer
        tmp.div_(torch.sqrt(1 - self.b2 ** t)).add_(self.eps)
        torch.div(self.m, tmp, out=tmp)
        w.mul_(1 - lr * weight_decay * active)
        w.sub_(tmp.mul_(step_size * active))
        self.bank.weights.grad = None
