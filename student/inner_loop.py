"""The student: loads once, absorbs self-edits through fresh LoRA adapters, is scored without the context.

The base model carries a `LoRABank` of K adapter slots. `absorb_many` trains K self-edits at once
(one forward/backward over all their rows per step, each row routed to its own adapter, a vectorised
AdamW); `score_many` answers every adapted student's queries in one batched greedy generation.
`absorb`/`score` are the one-adapter case. Each self-edit keeps the paper's semantics — its own
fresh seeded init, its own shuffled batches of `inner.batch_size` sequences, `inner.epochs` passes —
so K at once gives the same adapters as K one at a time (up to float summation order).
The no-update baseline of an instance is measured with the adapters off, once per base weights.

With `sync` set (a student whose weights DeepSpeed ZeRO-3 partitions across ranks, see
`seal.student.partitioned`), every forward pass gathers the weights from all ranks, so every rank must
run the same number of them: training steps, generations and baselines are agreed across ranks, and a
rank with less work runs no-op passes (no gradient, no update) until the others are done.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from seal.shared import memory
from seal.shared.config import ConfigError, InnerConfig
from seal.shared.dist import Dist
from seal.shared.domain import Domain, Score, TrainingPlan
from seal.shared.models import fingerprint, format_prompt, stated_decoding
from seal.student.multi_lora import LoRABank, SlotAdamW

Encoded = list[tuple[list[int], list[int], int]]
"""Per training sequence: token ids, labels (-100: not learnt) and how many leading tokens are text; the
rest, with `inner.train_on_padding`, are EOS pads that other tokens never attend to."""


class InnerLoopError(RuntimeError):
    """The inner loop could not produce a usable update (e.g. a non-finite loss); recorded as a failure."""


@dataclass
class AbsorbStats:
    steps: int
    tokens: int
    first_loss: float
    last_loss: float
    seconds: float
    """Wall time of the (possibly shared) training pass, divided by the adapters trained in it."""
    error: str | None = None
    """Why this adapter stopped training (a non-finite loss, a plan with no tokens); None when it trained."""


@dataclass
class Job:
    """One inner loop: absorb `plan` from a fresh adapter seeded with `seed`, then score on `instance`."""

    instance: Any
    plan: TrainingPlan
    seed: int
    key: Any = None
    """The caller's handle for this job (what its result is recorded under); not used by the student."""


@dataclass
class JobResult:
    job: Job
    score: Score | None
    stats: AbsorbStats | None
    score_seconds: float
    baseline: float
    """The student's no-update score on the job's instance."""
    error: str | None = None

    @property
    def reward(self) -> float:
        """The gain over the no-update baseline; 0 for a failed inner loop (as for an unusable self-edit)."""
        return 0.0 if self.error or self.score is None else self.score.value - self.baseline


def auto_slots(model, inner: InnerConfig, cap: int = 16) -> int:
    """Adapters trained per pass when `inner.parallel_adapters` is unset: as many as fit in the memory free
    now (call it once everything else is loaded), for rows as long as the inner loop can make them
    (batch_size × max_length tokens, cut at max_row_tokens: ARC's reach 16k), counting the bank and its
    optimizer (shared/memory.py; `recipes/plan.py` prints the same figures before a run)."""
    weight = next(model.parameters())
    if weight.device.type == "cuda":
        free = torch.cuda.mem_get_info(weight.device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    dtype = str(weight.dtype).removeprefix("torch.")
    row = memory.row_tokens(inner.batch_size, inner.max_length, inner.max_row_tokens)
    return memory.auto_slots(model, row, inner.lora_r, inner.target_modules, dtype, free,
                             inner.gradient_checkpointing, cap, inner.train_on_padding)


def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """The multiplier of the learning rate at optimizer step `step` (0-based) of `total`, as transformers'
    `get_scheduler(kind, num_warmup_steps=warmup, num_training_steps=total)` gives it
    (transformers/optimization.py: linear warm-up, then constant, linear decay to 0, or a half cosine)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lora_bank(model, inner: InnerConfig) -> LoRABank:
    """The K adapter slots over `model`'s targeted linear layers (wrapped in place); the base weights are
    frozen first, since the slots are all a student ever trains."""
    for p in model.parameters():
        p.requires_grad_(False)
    slots = inner.parallel_adapters or auto_slots(model, inner)
    try:
        return LoRABank(model, slots, inner.lora_r, inner.lora_alpha, inner.lora_dropout, inner.target_modules)
    except ValueError as err:  # target_modules that name no layer of this model
        raise ConfigError(f"inner.target_modules: {err}") from err


class Student:
    """A base model with K re-usable LoRA slots. `absorb*` trains them; `score*`/`baseline` evaluate.

    `bank`: the slots, when the caller had to wrap the model before building the student (a DeepSpeed
    engine must see the wrapped layers); built from `inner` otherwise. `scorer`: a `VLLMScorer` that
    scores the adapted students on vLLM instead of transformers. `sync`: the ranks that share this
    student's partitioned weights (ZeRO-3), None when the weights are local. `engine`: the DeepSpeed
    engine whose hooks gather the partitioned weights, kept alive with the student."""

    def __init__(self, model, tokenizer, inner: InnerConfig, domain: Domain, chat: bool, *,
                 bank: LoRABank | None = None, scorer=None, sync: Dist | None = None, engine=None):
        self.tokenizer = tokenizer
        self.inner = inner
        self.domain = domain
        self.chat = chat
        # LoRA weights are not model parameters (and the fingerprint skips `lora_` names), so it is the
        # base weights' identity whether or not the slots already wrap the layers
        self.base_fingerprint = fingerprint(model)
        self.bank = bank if bank is not None else lora_bank(model, inner)  # freezes the base weights
        self.slots = self.bank.slots
        self.model = model
        self.model.eval()
        self.device = next(model.parameters()).device
        self.baselines: dict[tuple[str, str], Score] = {}
        self.scorer = scorer
        self.sync = sync
        self.engine = engine
        # FLOPs per token of a training pass (forward + activation gradients over the weights that multiply:
        # an untied input embedding is a lookup; ZeRO-3 partitions report their full size as ds_numel) and
        # per token² of attention (scores and weighted values, forward and backward): what `_packs` weighs
        config = getattr(model.config, "get_text_config", lambda: model.config)()
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        untied = head is not None and head.weight is not embedding.weight
        weights = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()
                      if not (untied and p is embedding.weight))
        self._flops_per_token = 4 * weights
        self._flops_per_token_pair = 12 * config.hidden_size * config.num_hidden_layers
        if inner.gradient_checkpointing:  # active in train mode only: generation keeps its KV cache
            # non-reentrant: the reentrant variant runs one backward per layer through the adapters' views,
            # which all come from one routing of the bank (an index_select shared by every layer), so the
            # second layer's backward finds its graph freed. Under ZeRO-3 non-reentrant recomputation is
            # tested on CPU with DeepSpeed 0.19.8 (tests/test_distributed.py); older DeepSpeed releases
            # reported saved/recomputed mismatches with it (deepspeedai/DeepSpeed#4332).
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def agree(self, n: int) -> int:
        """How often to run a forward-running step so that every rank runs it equally often: the
        largest n over the ranks sharing the weights (n itself when they are local)."""
        return n if self.sync is None else self.sync.most(n)

    def _idle_generate(self) -> None:
        """A one-token generation that only takes part in the ranks' collective passes."""
        with self.adapters_off():
            self.generate(["."], max_new_tokens=1, stop=None)

    def adapters_off(self):
        """Context in which the model is the plain base model (baselines, teacher sampling in self mode)."""
        return self.bank.routed(None)

    # ------------------------------------------------------------------ training
    def encode(self, plan: TrainingPlan) -> Encoded:
        tok, out = self.tokenizer, []
        for ex in plan.examples:
            chat = ex.chat and self.chat
            prompt = format_prompt(tok, ex.prompt, chat) if ex.prompt else ""
            prompt_ids = tok(prompt, add_special_tokens=not chat)["input_ids"] if prompt else []
            completion_ids = tok(ex.completion, add_special_tokens=not prompt_ids)["input_ids"]
            ids = (prompt_ids + completion_ids + [tok.eos_token_id])[: self.inner.max_length]
            labels = list(ids) if plan.loss_on_prompt else [-100] * len(prompt_ids) + ids[len(prompt_ids):]
            labels, text = labels[: len(ids)], len(ids)
            if self.inner.train_on_padding:  # TTT_server.py: pad to max_length with EOS, pads in the labels
                pads = [tok.eos_token_id] * (self.inner.max_length - len(ids))
                ids, labels = ids + pads, labels + pads
            if any(label != -100 for label in labels[1:]):
                out.append((ids, labels, text))
        if not out:
            raise InnerLoopError("the training plan has no tokens to learn from")
        return out

    def _schedule(self, data: Encoded, plan: TrainingPlan, seed: int) -> list[list[int]]:
        """The paper's order for one self-edit: per epoch a seeded shuffle, cut into batches."""
        rng = torch.Generator().manual_seed(seed)
        epochs = plan.epochs if plan.epochs is not None else self.inner.epochs
        bs, batches = plan.batch_size or self.inner.batch_size, []
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=rng).tolist()
            batches += [order[i: i + bs] for i in range(0, len(order), bs)]
        return batches

    def _packs(self, lengths: Sequence[int]) -> bool:
        """Whether one pass over groups of these token counts runs as a single row of all of them rather
        than a row per group padded to the longest: padding costs every layer's matmuls, one long row costs
        attention over all its tokens (the mask is block-diagonal, but attention kernels compute it whole)
        and a matmul per adapter per layer instead of one batched one, launches the FLOP count does not
        see; hence only when it saves at least a fifth of the FLOPs. With the paper's batch of 1 on the
        published self-edits, the groups of a pass are single sequences of very different lengths (a
        passage beside one-line items): ~40 % of a padded pass is padding, and this rule trains 1.26× as
        fast on this CPU (BENCHMARKS.md); with batches of 4 (the demo) padding is ~10 %, and packing every
        pass that saves anything measured slower than not packing."""
        if self.inner.train_on_padding or len(lengths) < 2:
            return False
        total, width = sum(lengths), max(lengths)
        if self.inner.max_row_tokens is not None and total > self.inner.max_row_tokens:
            return False
        packed = total * self._flops_per_token + total ** 2 * self._flops_per_token_pair
        rows = len(lengths) * (width * self._flops_per_token + width ** 2 * self._flops_per_token_pair)
        return packed < 0.8 * rows

    def _rows(self, groups: Sequence[Sequence[tuple[list[int], list[int], int]]]) -> dict[str, Any]:
        """One packed row per group (an adapter's batch): its sequences back to back, positions restarting
        at each, attention block-diagonal and causal, so every sequence is computed exactly as if alone
        while no compute goes to padding inside an adapter's batch. Rows are right-padded to the longest,
        unless `_packs` puts every group into one row, back to back (`segments`: the groups' token counts,
        for the adapters to route by). `owner`: the group of every position, rows flattened."""
        lengths = [sum(len(ids) for ids, _, _ in g) for g in groups]
        if not self._packs(lengths):
            return self._padded_rows(groups, max(lengths))
        batch = self._padded_rows([[seq for g in groups for seq in g]], sum(lengths))
        batch["segments"] = lengths
        batch["owner"] = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(lengths)).to(self.device)
        return batch

    def _padded_rows(self, groups: Sequence[Sequence[tuple[list[int], list[int], int]]], width: int
                     ) -> dict[str, Any]:
        n = len(groups)
        ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), -100, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        segment = torch.full((n, width), -1, dtype=torch.long)
        attended = torch.zeros((n, width), dtype=torch.bool)
        for row, group in enumerate(groups):
            at = 0
            for k, (seq, lab, text) in enumerate(group):
                end = at + len(seq)
                ids[row, at:end] = torch.tensor(seq)
                labels[row, at + 1:end] = torch.tensor(lab[1:])  # a sequence's first token is never predicted
                positions[row, at:end] = torch.arange(len(seq))
                segment[row, at:end] = k
                attended[row, at:at + text] = True
                at = end
        out = {"input_ids": ids.to(self.device), "labels": labels.to(self.device),
               "position_ids": positions.to(self.device), "attention_mask": None, "segments": None,
               "owner": torch.arange(n, device=self.device).repeat_interleave(width)}
        if not self.inner.train_on_padding:
            # attention only within a sequence, causally: transformers reads the packing from the positions
            # restarting at 0 (masking_utils.find_packed_sequence_indices, with no 2D mask and no cache) and
            # builds the block-diagonal mask on the device (SDPA, eager); each packed sequence sees exactly
            # the context it would see alone (the equivalence tests rely on this). Row padding sits at
            # position 0: each pad is a sequence of its own. (flash_attention_2 reads packing from positions
            # only for a single row: models load with SDPA.)
            return out
        # a sequence's trained-on pads see its text only, as under HF's attention mask: a dense mask
        same = (segment[:, :, None] == segment[:, None, :]) & attended[:, None, :]
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        mask = (same & causal) | (torch.eye(width, dtype=torch.bool) & (segment < 0)[:, :, None])
        # (row padding attends to itself only: its softmax stays finite). Additive, as every attention
        # implementation reads a 4D mask: eager adds it to the scores, where a boolean one would add 0 or 1
        # (transformers/models/llama/modeling_llama.py eager_attention_forward)
        dtype = self.model.dtype
        additive = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
        out["attention_mask"] = additive[:, None].to(self.device)
        return out

    def absorb(self, plan: TrainingPlan, seed: int) -> AbsorbStats:
        """Train slot 0 from a fresh, seeded init on one plan; it stays active for `score`."""
        stats = self.absorb_many([plan], [seed])[0]
        if stats.error:
            raise InnerLoopError(stats.error)
        return stats

    def absorb_many(self, plans: Sequence[TrainingPlan], seeds: Sequence[int]) -> list[AbsorbStats]:
        """Train slot i on plans[i] from seeds[i], all in one pass per step. A slot whose plan has no
        tokens or whose loss turns non-finite stops there and carries the `error`; its rows never reach
        the others' gradients, so they train exactly as without it."""
        k = len(plans)
        if k > self.slots or (k == 0 and self.sync is None):  # under lockstep, 0 plans: only take part
            raise ValueError(f"absorb_many takes 1..{self.slots} plans, got {k}")
        start = time.perf_counter()
        encoded: dict[int, Encoded | InnerLoopError] = {}  # a plan absorbed under several seeds is tokenised once
        errors: list[str | None] = [None] * k
        data: list[Encoded] = []
        for i, p in enumerate(plans):
            if id(p) not in encoded:
                try:
                    encoded[id(p)] = self.encode(p)
                except InnerLoopError as err:
                    encoded[id(p)] = err
            got = encoded[id(p)]
            errors[i] = str(got) if isinstance(got, InnerLoopError) else None
            data.append([] if isinstance(got, InnerLoopError) else got)
        schedules = [self._schedule(d, p, s) if d else [] for d, p, s in zip(data, plans, seeds)]
        for slot, seed in enumerate(seeds):
            self.bank.reset(slot, seed)
        base_lr = [p.lr if p.lr is not None else self.inner.lr for p in plans]
        optimizer = SlotAdamW(self.bank)
        losses: list[list[float]] = [[] for _ in range(k)]
        tokens = [0] * k
        cuda = self.device.type == "cuda"
        # LoRA dropout draws its masks from the global generators, seeded per step below: restored after, so
        # whatever samples next (a GRPO rollout) does not see the same stream after every inner loop
        rng = (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None) \
            if self.bank.dropout else None
        self.model.train()
        try:
            for step in range(self.agree(max((len(s) for s in schedules), default=0))):
                # plans differ in length (sequences × epochs / batch): a finished or failed slot drops out
                # of the pass instead of padding it, so the others' steps cost what they would alone
                active = [i for i in range(k) if step < len(schedules[i]) and not errors[i]]
                if self.bank.dropout:  # LoRA dropout's masks (global RNG): from the chunk's seeds and the step
                    torch.manual_seed(hash((tuple(seeds), step)) & 0x7FFF_FFFF_FFFF_FFFF)
                batches = {i: [data[i][j] for j in schedules[i][step]] for i in active}
                # one loss per slot, each the mean over its own tokens of the step (as if it trained alone):
                # summing them gives every slot exactly its own gradient, since a slot's rows touch only its
                # weights; a batch longer than inner.max_row_tokens runs as several passes whose gradients
                # add up to the same step (gradient accumulation)
                counts = {i: max(1, sum(sum(label != -100 for label in lab[1:]) for _, lab, _ in b))
                          for i, b in batches.items()}
                parts = {i: self._micro_batches(b) for i, b in batches.items()}
                slot_loss = dict.fromkeys(active, 0.0)
                for n in range(self.agree(max((len(p) for p in parts.values()), default=1))):
                    rows = [i for i in active if n < len(parts[i]) and not errors[i]]  # failed in an earlier pass
                    self._backward(step, [parts[i][n] for i in rows], [counts[i] for i in rows], rows, slot_loss,
                                   errors)
                trained = [i for i in active if not errors[i]]
                mask = torch.zeros(self.slots, 1, device=self.device)
                mask[trained] = 1  # slots without rows this step keep weights and moments (AdamW would decay them)
                # each adapter follows the schedule over its own number of steps; one tensor per step (built
                # on the host: per-slot writes into a device tensor would be one transfer each)
                lr = torch.tensor([[base_lr[i] * lr_factor(self.inner.lr_scheduler, step, len(schedules[i]),
                                                           self.inner.warmup_steps) if i in trained else 0.0]
                                   for i in range(self.slots)], device=self.device)
                optimizer.step(lr, self.inner.weight_decay, self.inner.max_grad_norm, mask)
                for i in trained:
                    losses[i].append(slot_loss[i])
                    tokens[i] += sum(len(ids) for ids, _, _ in batches[i])
        finally:
            self.model.eval()
            if rng is not None:
                torch.set_rng_state(rng[0])
                if rng[1] is not None:
                    torch.cuda.set_rng_state(rng[1], self.device)
        seconds = (time.perf_counter() - start) / max(k, 1)
        return [AbsorbStats(steps=len(losses[i]), tokens=tokens[i], first_loss=losses[i][0] if losses[i] else math.nan,
                            last_loss=losses[i][-1] if losses[i] else math.nan, seconds=seconds, error=errors[i])
                for i in range(k)]

    def _micro_batches(self, batch: Encoded) -> list[Encoded]:
        """A slot's batch cut into passes of at most inner.max_row_tokens tokens (in order; a sequence
        longer than that is a pass of its own)."""
        budget = self.inner.max_row_tokens
        if budget is None:
            return [batch]
        out: list[Encoded] = [[]]
        for seq in batch:
            if out[-1] and sum(len(s[0]) for s in out[-1]) + len(seq[0]) > budget:
                out.append([])
            out[-1].append(seq)
        return out

    def _backward(self, step: int, groups: list[Encoded], counts: list[int], slots: list[int],
                  slot_loss: dict[int, float], errors: list[str | None]) -> None:
        """One forward and backward pass: row r is slots[r]'s sequences `groups[r]`, its loss summed over
        its tokens and divided by `counts[r]` (the tokens of the slot's whole step). No rows: a pass with
        no loss (another rank still trains, and ZeRO-3 needs every rank in every pass)."""
        groups = groups or [[([self.tokenizer.eos_token_id] * 2, [-100] * 2, 2)]]
        if self._pass(step, self._rows(groups), counts, slots, slot_loss, errors, may_unpack=True):
            # a diverged adapter's NaN reaches every segment of a packed row through attention (a masked
            # score weighs a NaN value by 0, which is NaN): the pass runs again as one row per slot, where
            # it stays in its own row
            width = max(sum(len(ids) for ids, _, _ in g) for g in groups)
            self._pass(step, self._padded_rows(groups, width), counts, slots, slot_loss, errors)

    def _pass(self, step: int, batch: dict[str, Any], counts: list[int], slots: list[int],
              slot_loss: dict[int, float], errors: list[str | None], may_unpack: bool = False) -> bool:
        """Forward and backward of one batch of rows. With `may_unpack`: True, and no backward, when on any
        rank a packed row holds a slot whose loss is not finite (every rank then runs its pass again
        unpacked: ZeRO-3 needs every rank in every pass, and none may have added this pass's gradients)."""
        # backward inside the routing: with gradient checkpointing the layers run again during it
        with self.bank.routed(slots or [0], batch["segments"]):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                position_ids=batch["position_ids"], use_cache=False).logits
            # the loss reads only the positions that predict a label, gathered into one contiguous
            # [tokens, vocab] block: a log-softmax across a transposed [rows, vocab, width] view and the
            # backward of slicing off the last position each cost a pass over every row's logits, padding
            # included (with a 49k vocabulary, ~11 % of a K=4 step on CPU in a torch profile; BENCHMARKS.md)
            n, width = batch["labels"].shape
            target = torch.full_like(batch["labels"], -100)
            target[:, :-1] = batch["labels"][:, 1:]  # position t predicts token t+1
            keep = (target.flatten() != -100).nonzero().flatten()
            per_token = F.cross_entropy(logits.reshape(n * width, -1).index_select(0, keep).float(),
                                        target.flatten()[keep], reduction="none")
            # each row's sum over its own labelled tokens only, added in order: the same bits whatever the
            # other rows' padding (one process and two give the same records; a sum over the padded rows
            # does not). On CUDA index_add_ adds with atomics: the recorded loss may differ in its last
            # bits between runs there, the gradients (1/count per token) do not.
            summed = per_token.new_zeros(len(counts) or 1).index_add_(0, batch["owner"][keep], per_token)
            part = summed / torch.tensor(counts or [1], dtype=per_token.dtype, device=per_token.device)
            finite = torch.isfinite(part) if slots else torch.ones(1, dtype=torch.bool, device=self.device)
            if may_unpack and self.agree(int(batch["segments"] is not None and not bool(finite.all()))):
                return True
            for row in (~finite).nonzero().flatten().tolist():
                errors[slots[row]] = f"non-finite training loss at step {step + 1}"
            # a non-finite slot is zeroed out of the sum: NaN times zero would still poison the others
            torch.where(finite, part, 0.0).sum().backward()
        for slot, value in zip(slots, part.tolist()):
            slot_loss[slot] += value
        return False

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, stop: str | None = "\n",
                 limits: Sequence[int] | None = None) -> list[str]:
        """Greedy answers for a batch of user messages, formatted with the student's chat template if any.
        `limits`: each prompt's own token budget (at most max_new_tokens): greedy decoding makes the first
        n tokens of a longer answer the answer an n-token budget gives."""
        tok = self.tokenizer
        texts = [format_prompt(tok, p, self.chat) for p in prompts]
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat).to(self.device)
        extra = {"stop_strings": stop, "tokenizer": tok} if stop else {}
        with stated_decoding(self.model, tok):
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id, synced_gpus=self.sync is not None, **extra)
        new = out[:, enc["input_ids"].shape[1]:]
        if limits is None:
            return tok.batch_decode(new, skip_special_tokens=True)
        return [tok.decode(row[:n], skip_special_tokens=True) for row, n in zip(new, limits)]

    def score(self, instance: Any) -> Score:
        """Score with slot 0 as it stands (after `absorb`)."""
        return self.score_many([instance])[0]

    def score_many(self, instances: Sequence[Any], slots: Sequence[int] | None = None) -> list[Score]:
        """instances[i] is answered by adapter slots[i] (default: slot i) in batched generations of at most
        inner.score_batch_tokens tokens (rows × (longest prompt + answer)): one adapter may answer every
        held-out instance (CPT), which in one batch would not fit a GPU."""
        if not instances and self.sync is None:
            return []
        slots = list(range(len(instances))) if slots is None else list(slots)
        queries = [self.domain.queries(inst) for inst in instances]
        batches: list[range] = []
        if queries:
            width = max(len(q.prompts) for q in queries)
            stops = {q.stop for q in queries}
            if len(stops) > 1:
                raise ValueError("instances scored together must share a stop string")
            stop, new = stops.pop(), max(q.max_new_tokens for q in queries)
            tok = self.tokenizer
            texts = [format_prompt(tok, p, self.chat) for q in queries for p in q.prompts]
            # a token covers at least one byte: when even that bound fits, skip tokenising every prompt
            # twice (generate tokenises them again) on the scoring path of every chunk
            longest = max(len(t.encode()) for t in texts) + 2
            if len(instances) * width * (longest + new) > self.inner.score_batch_tokens:
                longest = max(len(ids) for ids in tok(texts, add_special_tokens=not self.chat)["input_ids"])
            group = max(1, self.inner.score_batch_tokens // (width * (longest + new)))
            batches = [range(a, min(a + group, len(instances))) for a in range(0, len(instances), group)]
        answers: list[str] = []
        # under lockstep every rank agrees on the number of generations, one with nothing to score too
        for n in range(self.agree(len(batches))):
            if n >= len(batches):  # another rank is still generating: take part in its passes
                self._idle_generate()
                continue
            prompts, limits = [], []
            for i in batches[n]:  # equal rows per slot: repeat the last query as filler, answers discarded
                prompts += queries[i].prompts + [queries[i].prompts[-1]] * (width - len(queries[i].prompts))
                limits += [queries[i].max_new_tokens] * width  # its own budget, whatever its batch's largest
            with self.bank.routed([slots[i] for i in batches[n]]):
                answers += self.generate(prompts, new, stop, limits)
        return [self.domain.grade(inst, answers[i * width: i * width + len(q.prompts)])
                for i, (inst, q) in enumerate(zip(instances, queries))]

    def close(self) -> None:
        """Delete the vLLM scoring engine, if any, before another student builds its own (vLLM allows one
        sleep-mode engine per process: `seal.shared.vllm_engine.dispose`)."""
        if self.scorer is not None:
            self.scorer.close()

    def baseline(self, instance: Any) -> Score:
        """Score of the unmodified base model; measured once per (base weights, instance)."""
        key = (self.base_fingerprint, self.domain.instance_id(instance))
        if key not in self.baselines:
            if self.scorer is not None:  # the same engine and decoding as the adapted scores it is subtracted from
                self.baselines[key] = self.scorer.score([instance], None, [None])[0]
            else:
                with self.adapters_off():
                    self.baselines[key] = self.domain.evaluate(instance, self.generate)
        return self.baselines[key]

    def baseline_many(self, instances: Sequence[Any],
                      measured: Callable[[Any, Score], None] | None = None) -> list[Score]:
        """`baseline` of each instance. The ones not cached are measured one by one (an agreed number of
        times), each handed to `measured` as soon as it is known."""
        todo = list({self.domain.instance_id(i): i for i in instances
                     if (self.base_fingerprint, self.domain.instance_id(i)) not in self.baselines}.values())
        for n in range(self.agree(len(todo))):
            if n >= len(todo):
                self._idle_generate()
            elif measured is not None:
                measured(todo[n], self.baseline(todo[n]))
            else:
                self.baseline(todo[n])
        return [self.baseline(i) for i in instances]

    def save_adapter(self, slot: int, path, dtype: torch.dtype | None = None) -> None:
        """Write one trained slot as a peft LoRA adapter (loadable with `PeftModel.from_pretrained`), in
        `dtype` (default: the bank's, fp32)."""
        from pathlib import Path

        from peft import LoraConfig
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        targets = sorted({name.split(".")[-1] for name, _ in self.bank.layers})
        LoraConfig(r=self.inner.lora_r, lora_alpha=self.inner.lora_alpha, lora_dropout=self.inner.lora_dropout,
                   target_modules=targets, bias="none", task_type="CAUSAL_LM",
                   base_model_name_or_path=getattr(self.model.config, "_name_or_path", None)).save_pretrained(path)
        state = {k: v.to(dtype or v.dtype).contiguous() for k, v in self.bank.peft_state_dict(slot).items()}
        save_file(state, str(path / "adapter_model.safetensors"))

    # ------------------------------------------------------------------ the fast path
    def run(self, jobs: Sequence[Job], done: Callable[[list[JobResult]], None] | None = None) -> list[JobResult]:
        """Absorb and score every job, `slots` at a time, handing each chunk's results to `done` as soon
        as they are scored; a job whose loss diverges fails alone. Each result's `reward` is its gain
        over the instance's baseline (measured first where not cached)."""
        self.baseline_many([job.instance for job in jobs])
        results: list[JobResult] = []
        for n in range(self.agree(math.ceil(len(jobs) / self.slots))):
            chunk = self._run_chunk(list(jobs[n * self.slots: (n + 1) * self.slots]))
            if done is not None and chunk:
                done(chunk)
            results += chunk
        return results

    def _run_chunk(self, chunk: list[Job]) -> list[JobResult]:
        stats = self.absorb_many([j.plan for j in chunk], [j.seed for j in chunk])
        trained = [slot for slot, st in enumerate(stats) if not st.error]
        start = time.perf_counter()
        instances = [chunk[slot].instance for slot in trained]
        if self.scorer is None:
            scores = self.score_many(instances, trained)
        else:
            scores = self.scorer.score(instances, self.save_adapter, trained) if instances else []
        per = (time.perf_counter() - start) / max(len(trained), 1)
        by_slot = dict(zip(trained, scores))
        results = []
        for slot, (job, st) in enumerate(zip(chunk, stats)):
            base = self.baseline(job.instance).value
            results.append(JobResult(job, by_slot[slot], st, per, base) if slot in by_slot
                           else JobResult(job, None, None, 0.0, base, error=st.error))
        return results

    def run_shared(self, plan: TrainingPlan, seeds: Sequence[int], instances: Sequence[Any],
                   done: Callable[[int, AbsorbStats, list[Score] | None, float], None]) -> None:
        """One adapter per seed on the same plan (e.g. every held-out instance's sequences at once), each
        then scored on every instance; `done(seed, stats, scores, score_seconds)` per seed, scores None
        (and 0 seconds) when it failed.
        Under lockstep a rank with fewer seeds takes part in the others' passes."""
        slots = self.slots
        for n in range(self.agree(math.ceil(len(seeds) / slots))):
            chunk = list(seeds[n * slots: (n + 1) * slots])
            stats = self.absorb_many([plan] * len(chunk), chunk)
            trained = [slot for slot, st in enumerate(stats) if not st.error]
            for slot, st in enumerate(stats):
                if st.error:
                    done(chunk[slot], st, None, 0.0)
            for m in range(self.agree(len(trained))):
                if m >= len(trained):
                    self.score_many([])  # another rank is still scoring: take part in its passes
                    continue
                slot = trained[m]
                start = time.perf_counter()
                scores = self.score_many(instances, [slot] * len(instances))
                done(chunk[slot], stats[slot], scores, time.perf_counter() - start)
