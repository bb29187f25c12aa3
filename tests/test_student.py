import pytest
import torch

from seal.shared.config import InnerConfig, ModelConfig, SamplingConfig
from seal.shared.domain import Example, TrainingPlan
from seal.shared.knowledge import KnowledgeDomain
from seal.shared.models import load_model
from seal.student import InnerLoopError, Job, Student
from seal.teacher import Teacher


def make_student(model_dir, **inner):
    model, tok = load_model(ModelConfig(name=str(model_dir)))
    cfg = InnerConfig(**{"lora_r": 4, "lora_alpha": 8, "epochs": 3, "lr": 1e-2, "batch_size": 2,
                         "parallel_adapters": 4, **inner})
    return Student(model, tok, cfg, KnowledgeDomain(), chat=True)


TEXTS = ("Velmora Lighthouse\nThe lamp can be seen from 31 kilometres away.",
         "Velmora Lighthouse\nIts keeper is Oda Brannick.", "Velmora Lighthouse\nBuilt in 1874.")


def plan(texts=TEXTS):
    return TrainingPlan(examples=[Example("", t) for t in texts])


def test_absorb_lowers_the_loss_and_only_trains_lora(tiny_model_dir):
    student = make_student(tiny_model_dir, epochs=8)
    base = {n: p.detach().clone() for n, p in student.model.named_parameters() if "bank" not in n}
    stats = student.absorb(plan(), seed=0)
    assert stats.steps == 8 * 2  # 3 sequences, batch 2 -> 2 steps per epoch
    assert stats.last_loss < stats.first_loss
    for n, p in student.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert student.bank.weights[0].abs().sum() > 0 and student.bank.weights[1:].abs().sum() == 0


def test_adapter_init_leaves_the_global_random_state_alone(tiny_model_dir, monkeypatch):
    """torch.manual_seed also reseeds every CUDA generator: on a GPU each GRPO step's sampling would
    restart from the same state. The bank draws from a private generator instead."""
    student = make_student(tiny_model_dir)
    before = torch.random.get_rng_state()
    monkeypatch.setattr(torch, "manual_seed", lambda *a: pytest.fail("reset seeded the global RNG"))
    student.bank.reset(0, 7)
    first = student.bank.weights[0].clone()
    torch.rand(3)  # the global stream moves on; the init must not depend on it
    student.bank.reset(0, 7)
    assert torch.equal(first, student.bank.weights[0]) and first.abs().sum() > 0
    torch.random.set_rng_state(before)
    student.bank.reset(1, 7)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_seeded_reset_makes_absorb_reproducible(tiny_model_dir):
    student = make_student(tiny_model_dir)
    a = student.absorb(plan(), seed=1)
    wa = student.bank.weights[0].detach().clone()
    b = student.absorb(plan(), seed=1)
    assert torch.equal(wa, student.bank.weights[0]) and a.last_loss == b.last_loss
    student.absorb(plan(), seed=2)
    assert not torch.allclose(wa, student.bank.weights[0])


def test_first_loss_is_the_token_weighted_base_loss_of_the_first_batch(tiny_model_dir):
    """B starts at zero, so step 1 sees the base model; padding and filler rows must not count."""
    student = make_student(tiny_model_dir)
    p = plan()
    data = student.encode(p)
    first = student._schedule(data, p, seed=3)[0]
    assert len({len(data[j][0]) for j in first}) == 2  # different lengths: padding happens
    total, count = 0.0, 0
    with torch.no_grad():
        for j in first:
            ids = torch.tensor([data[j][0]])
            out = student.model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total, count = total + out.loss.item() * n, count + n
    assert student.absorb(p, seed=3).first_loss == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_training_on_padding_computes_the_official_loss(tiny_model_dir, attention):
    """inner.train_on_padding: TTT_server.py pads each sequence to max_length with EOS (pad = eos), keeps
    the pads in the labels and masks them from attention; step 1's loss is HF's loss on exactly that,
    under either attention implementation (eager adds a 4D mask to the scores: a boolean one masked
    nothing)."""
    student = make_student(tiny_model_dir, train_on_padding=True, max_length=40, batch_size=1)
    student.model.set_attn_implementation(attention)
    p = plan(TEXTS[:1])
    ((ids, labels, text),) = student.encode(p)
    eos = student.tokenizer.eos_token_id
    assert len(ids) == 40 and ids[text:] == [eos] * (40 - text) and labels == ids
    with torch.no_grad():
        mask = torch.tensor([[1] * text + [0] * (40 - text)])
        x = torch.tensor([ids])
        official = student.model(input_ids=x, attention_mask=mask, labels=x).loss.item()
    stats = student.absorb(p, seed=0)
    assert stats.tokens // stats.steps == 40  # every step pays for the padding too
    assert stats.first_loss == pytest.approx(official, rel=1e-5)
    assert make_student(tiny_model_dir, max_length=40).absorb(p, seed=0).first_loss != pytest.approx(official)


def test_prompt_tokens_are_masked_when_the_plan_says_so(tiny_model_dir):
    student = make_student(tiny_model_dir)
    p = TrainingPlan(examples=[Example("What is two plus two?", "four", chat=True)], loss_on_prompt=False)
    ((ids, labels, _),) = student.encode(p)
    answer = student.tokenizer("four", add_special_tokens=False)["input_ids"] + [student.tokenizer.eos_token_id]
    assert [x for x in labels if x != -100] == answer
    assert ids[-len(answer):] == answer
    assert "<|im_start|>user" in student.tokenizer.decode(ids)  # the chat template was applied


def test_many_adapters_at_once_equal_one_at_a_time(tiny_model_dir):
    """The fast path's contract: K self-edits trained together give the adapters, losses and answers
    of K sequential runs (tolerance: float summation order, 1e-4 relative on weights, see atol below)."""
    plans = [plan(), plan(TEXTS[:2]), plan(TEXTS[1:] + ("Velmora Lighthouse\nGreen and white stripes.",)),
             TrainingPlan(examples=[Example("", TEXTS[0])], epochs=5, lr=3e-2)]
    seeds = [0, 1, 2, 3]
    insts = KnowledgeDomain().load("builtin", "train[:4]")
    student = make_student(tiny_model_dir, lr=3e-2, lr_scheduler="linear", warmup_steps=1)
    together = student.absorb_many(plans, seeds)  # plans of different lengths: each its own schedule
    w_together = student.bank.weights.detach().clone()
    answers_together = [s.details for s in student.score_many(insts)]
    for i, (p, s) in enumerate(zip(plans, seeds)):
        alone = student.absorb(p, s)
        assert alone.steps == together[i].steps and alone.tokens == together[i].tokens
        assert alone.last_loss == pytest.approx(together[i].last_loss, rel=1e-4)
        # atol: Adam divides by sqrt(v), so an element with a near-zero gradient turns last-bit gradient
        # differences (summation order) into weight differences of up to ~1e-3 of lr (3e-2 here)
        torch.testing.assert_close(student.bank.weights[0], w_together[i], rtol=1e-4, atol=5e-5)
        assert [d["prediction"] for d in student.score(insts[i]).details] == \
            [d["prediction"] for d in answers_together[i]]
    assert [t.steps for t in together] == [3 * 2, 3 * 1, 3 * 2, 5]



def test_a_pass_of_very_different_lengths_runs_as_one_row_and_trains_as_padded_rows(tiny_model_dir):
    """With the paper's batch of 1, a pass holds one sequence per adapter: a passage beside one-line items.
    Such a pass runs as one row of all of them (each adapter on its own run of tokens) instead of rows
    padded to the passage, and trains the adapters, with the losses, that padded rows give."""
    passage = "Velmora Lighthouse\n" + " ".join(TEXTS[0].split("\n")[1:] * 8)
    plans = [plan((passage, "Built in 1874.")), plan(("Oda Brannick.", "Its keeper.")),
             plan(("Green.", "White.")), plan(("Velmora.",))]
    seeds = [0, 1, 2, 3]
    packed, padded = (make_student(tiny_model_dir, batch_size=1, epochs=2, lr=3e-2) for _ in range(2))
    padded._packs = lambda lengths: False
    seen = []
    rows = packed._rows
    packed._rows = lambda groups: seen.append(rows(groups)) or seen[-1]
    a = packed.absorb_many(plans, seeds)
    b = padded.absorb_many(plans, seeds)
    assert any(batch["segments"] for batch in seen)  # packed passes happened
    assert all(batch["input_ids"].shape[0] == 1 for batch in seen if batch["segments"])
    assert [x.steps for x in a] == [x.steps for x in b] and [x.tokens for x in a] == [x.tokens for x in b]
    for x, y in zip(a, b):
        assert x.first_loss == pytest.approx(y.first_loss, rel=1e-5)
        assert x.last_loss == pytest.approx(y.last_loss, rel=1e-4)
    torch.testing.assert_close(packed.bank.weights, padded.bank.weights, rtol=1e-4, atol=5e-5)


def test_a_diverging_adapter_in_a_packed_pass_fails_alone(tiny_model_dir):
    """In one packed row a diverged adapter's NaN reached every other segment through attention, so one
    bad self-edit failed every adapter of its pass; such a pass now runs again as one row per adapter."""
    passage = "Velmora Lighthouse\n" + " ".join(TEXTS[0].split("\n")[1:] * 8)
    good = [plan(("Oda Brannick.", "Its keeper.")), plan(("Velmora.",)), plan(("Green.", "White."))]
    # a finite first loss, then infinite weights; its seed puts the long passage in step 2, a packed pass
    bad = TrainingPlan(examples=plan((passage, "Built in 1874.")).examples, lr=1e30)
    student = make_student(tiny_model_dir, batch_size=1, epochs=3, lr=3e-2, max_grad_norm=0.0)
    seen = []
    rows = student._rows
    student._rows = lambda groups: seen.append(rows(groups)) or seen[-1]
    together = student.absorb_many([bad, *good], [1, 1, 2, 3])
    assert len(seen) > 1 and seen[1]["segments"]  # step 2 packed the diverged adapter beside the others
    assert [s.error is None for s in together] == [False, True, True, True]
    assert "non-finite training loss at step 2" in together[0].error
    trained = student.bank.weights[1:4].clone()
    alone = student.absorb_many(good, [1, 2, 3])
    assert [s.steps for s in alone] == [s.steps for s in together[1:]]
    for x, y in zip(alone, together[1:]):
        assert y.last_loss == pytest.approx(x.last_loss, rel=1e-4)
    # (alone, no pass packs: the same sums in another order)
    torch.testing.assert_close(trained, student.bank.weights[:3], rtol=1e-3, atol=2e-4)


def test_one_adapter_answering_many_instances_uses_the_slot_itself(tiny_model_dir):
    """CPT's adapter answers every held-out instance: the groups of one slot become one group of all the
    rows (no copy of the slot per group), with the outputs of the grouped path."""
    student = make_student(tiny_model_dir)
    student.absorb_many([plan(), plan(TEXTS[:2])], [0, 1])
    bank, x = student.bank, torch.randn(3 * 5, 7, student.model.config.hidden_size)
    name, layer = bank.layers[0]
    with bank.routed([1, 1, 1]):
        view = bank.views[0][0]
        assert view.shape[0] == 1 and view.untyped_storage().data_ptr() == bank.weights.untyped_storage().data_ptr()
        shared = layer(x)
    # the grouped path, as for distinct slots: the slot's weights copied once per group
    with bank.routed([1, 0]):
        bank.views = [(a.index_select(0, torch.tensor([0, 0, 0])), b.index_select(0, torch.tensor([0, 0, 0])))
                      for a, b in bank.views]
        bank.route = torch.tensor([1, 1, 1])
        grouped = layer(x)
    torch.testing.assert_close(shared, grouped)
    insts = KnowledgeDomain().load("builtin", "train[:3]")
    many = student.score_many(insts, [1, 1, 1])
    assert [s.details for s in many] == [student.score_many([i], [1])[0].details for i in insts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_group_of_rows_gets_its_slots_scaled_update_over_the_base_output(dtype):
    """y = W x + (alpha/r)·B_s A_s x for the rows routed to slot s, computed in the bank's fp32 and added
    in the model's dtype (a bf16 model on a GPU carries fp32 adapters)."""
    from collections import OrderedDict

    from seal.student.multi_lora import LoRABank

    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(proj=torch.nn.Linear(8, 6))).to(dtype)
    bank = LoRABank(model, slots=3, r=2, alpha=4, dropout=0.0, target_modules=["proj"])
    with torch.no_grad():
        bank.weights.normal_()
    x = torch.randn(4, 5, 8, dtype=dtype)
    with bank.routed([2, 0]), torch.no_grad():  # rows 0-1 to slot 2, rows 2-3 to slot 0
        got = model(x)
    with bank.routed([2, 0], segments=[10, 10]), torch.no_grad():  # the same tokens as one packed row
        packed = model(x.reshape(1, 20, 8)).view(got.shape)
    torch.testing.assert_close(packed, got)
    base = model.proj.base
    for rows, slot in ((slice(0, 2), 2), (slice(2, 4), 0)):
        state = bank.peft_state_dict(slot)
        a, b = state["base_model.model.proj.lora_A.weight"], state["base_model.model.proj.lora_B.weight"]
        delta = 2.0 * (x[rows].float() @ a.T @ b.T)
        torch.testing.assert_close(got[rows], base(x[rows]) + delta.to(dtype))


@pytest.mark.parametrize("scheduler, warmup", [("constant", 0), ("linear", 0), ("cosine", 2)])
def test_one_slot_trains_like_peft_lora_with_torch_adamw(tiny_model_dir, scheduler, warmup):
    """Our LoRA forward, loss, optimizer and schedule against peft's LoRA layers, torch.optim.AdamW and
    transformers' scheduler of the same name."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    student = make_student(tiny_model_dir, epochs=2, batch_size=1, lr=1e-2, max_grad_norm=1.0,
                           lr_scheduler=scheduler, warmup_steps=warmup)
    p = plan()
    student.bank.reset(0, 5)
    init = student.bank.peft_state_dict(0)
    student.absorb(p, seed=5)
    ours = student.bank.peft_state_dict(0)

    ref_model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    ref = get_peft_model(ref_model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    ref.load_state_dict({k.replace(".weight", ".default.weight"): v for k, v in init.items()}, strict=False)
    params = [q for n, q in ref.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    data = student.encode(p)
    batches = student._schedule(data, p, seed=5)
    sched = get_scheduler(scheduler, opt, num_warmup_steps=warmup, num_training_steps=len(batches))
    ref.train()
    for batch in batches:
        (j,) = batch
        ids = torch.tensor([data[j][0]])
        ref(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    ref_state = {n.replace(".default", ""): q for n, q in ref.named_parameters() if "lora_" in n}
    assert ref_state.keys() == ours.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], ref_state[k].detach(), rtol=1e-3, atol=1e-5)


def test_a_saved_slot_loads_as_a_peft_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel

    student = make_student(tiny_model_dir, lr=5e-2)
    student.absorb(plan(), seed=0)
    student.save_adapter(0, tmp_path / "adapter")
    ids = torch.tensor([student.encode(plan())[0][0]])
    with torch.no_grad(), student.bank.routed([0]):
        ours = student.model(input_ids=ids).logits
    base, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    with torch.no_grad():
        theirs = loaded(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_baseline_is_cached_and_ignores_the_adapter(tiny_model_dir):
    student = make_student(tiny_model_dir, lr=5e-2, epochs=5)
    inst = KnowledgeDomain().load("builtin", "train[:1]")[0]
    calls = []
    original = student.generate

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    student.generate = counting
    first = student.baseline(inst)
    student.absorb(plan(), seed=0)
    again = student.baseline(inst)
    assert again is first and len(calls) == 1
    student.generate = original
    adapted = student.score(inst)
    with student.adapters_off():
        plain = student.domain.evaluate(inst, original)
    assert [d["prediction"] for d in plain.details] == [d["prediction"] for d in first.details]
    assert [d["prediction"] for d in adapted.details] != [d["prediction"] for d in first.details]


def test_job_rewards_are_gains_over_the_baseline(tiny_model_dir):
    student = make_student(tiny_model_dir)
    inst = KnowledgeDomain().load("builtin", "train[:1]")[0]
    results = student.run([Job(inst, plan(), seed) for seed in (0, 1)])
    base = student.baseline(inst).value
    assert [r.job.seed for r in results] == [0, 1]
    for r in results:
        assert r.baseline == base and r.reward == pytest.approx(r.score.value - base)
        assert len(r.score.details) == len(inst.questions)


def test_a_diverging_job_fails_alone(tiny_model_dir):
    student = make_student(tiny_model_dir, max_grad_norm=0.0)
    inst = KnowledgeDomain().load("builtin", "train[:1]")[0]
    bad = TrainingPlan(examples=plan().examples, lr=float("inf"))
    results = student.run([Job(inst, plan(), 0), Job(inst, bad, 1), Job(inst, plan(), 2)])
    assert [r.error is None for r in results] == [True, False, True]
    assert "non-finite training loss" in results[1].error
    # the diverged adapter shared every pass with the others, yet they trained exactly as without it
    alone = student.run([Job(inst, plan(), 0), Job(inst, plan(), 2)])
    for together, single in zip([results[0], results[2]], alone):
        assert together.stats.last_loss == pytest.approx(single.stats.last_loss, rel=1e-5)
        assert [d["prediction"] for d in together.score.details] == [d["prediction"] for d in single.score.details]
    assert results[1].stats is None and results[1].score is None
    with pytest.raises(InnerLoopError, match="non-finite training loss"):
        student.absorb(bad, seed=0)


def test_empty_plan_is_an_inner_loop_error(tiny_model_dir):
    with pytest.raises(InnerLoopError, match="no tokens"):
        make_student(tiny_model_dir).absorb(TrainingPlan(examples=[]), seed=0)


def test_teacher_samples_k_seeded_self_edits_without_the_adapter(tiny_model_dir):
    student = make_student(tiny_model_dir, lr=5e-2, epochs=5)
    domain = student.domain
    teacher = Teacher(student.model, student.tokenizer, SamplingConfig(k=3, max_new_tokens=12, temperature=1.0),
                      domain, chat=True)
    insts = domain.load("builtin", "train[:2]")
    first = teacher.sample(insts)
    assert [len(s.texts) for s in first] == [3, 3]
    assert first[0].prompt.startswith("<|im_start|>user\nLet's read the following passage")
    student.absorb(plan(), seed=0)  # a trained adapter must not leak into the teacher's samples
    again = teacher.sample(insts)
    assert [s.texts for s in again] == [s.texts for s in first]
    assert teacher.sample(insts, round_=1)[0].texts != first[0].texts
    with pytest.raises(ValueError, match="sampling.backend: expected one of 'hf', 'vllm', 'openai'"):
        SamplingConfig(backend="tpu")


def test_decoding_ignores_what_the_checkpoint_generation_config_adds(tiny_model_dir):
    """A Qwen2.5-Instruct generation_config.json carries repetition_penalty 1.05 and top_k 20: with vLLM's
    explicit SamplingParams they do not apply, so the transformers path must not apply them either, or
    the baseline and the adapted score would be decoded differently."""
    student = make_student(tiny_model_dir)
    prompts = ["Who keeps the Velmora Lighthouse?", "When was it built?"]
    plain = student.generate(prompts, 12, stop=None)
    student.model.generation_config.repetition_penalty = 50.0
    student.model.generation_config.no_repeat_ngram_size = 1
    assert student.generate(prompts, 12, stop=None) == plain
    teacher = Teacher(student.model, student.tokenizer, SamplingConfig(k=2, max_new_tokens=12), KnowledgeDomain(),
                      chat=True)
    inst = KnowledgeDomain().load("builtin", "train[:1]")
    with_defaults = teacher.sample(inst)[0].texts
    student.model.generation_config.repetition_penalty = None
    student.model.generation_config.no_repeat_ngram_size = None
    assert teacher.sample(inst)[0].texts == with_defaults


def test_a_dropped_student_frees_its_models_weights_without_a_garbage_collection(tiny_model_dir):
    """The bank and its wrapped layers must not form a reference cycle: the old weights would stay in
    (GPU) memory until a full collection, right when the teacher SFT loads the next model."""
    import gc
    import weakref

    student = make_student(tiny_model_dir)
    student.absorb(plan(TEXTS[:1]), seed=0)
    weight = weakref.ref(student.bank.layers[0][1].base.weight)
    gc.collect()
    gc.disable()
    try:
        del student
        assert weight() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("memory_saver", [{"max_row_tokens": 40}, {"gradient_checkpointing": True}])
def test_memory_savers_train_the_same_adapters(tiny_model_dir, memory_saver):
    """inner.max_row_tokens (a step's batch in several passes, gradients summed) and gradient
    checkpointing (layers recomputed during the backward pass, inside the adapter routing) change what
    is held in memory, not what is learnt."""
    plans = [plan(), plan(TEXTS[:2]), plan(TEXTS[1:] + ("Velmora Lighthouse\nGreen and white stripes.",))]
    import warnings

    plain = make_student(tiny_model_dir, batch_size=3, epochs=2, lr_scheduler="linear")
    with warnings.catch_warnings():  # transformers 5 deprecates gradient_checkpointing_enable (FutureWarning)
        warnings.simplefilter("error", FutureWarning)
        saver = make_student(tiny_model_dir, batch_size=3, epochs=2, lr_scheduler="linear", **memory_saver)
    passes = []
    if "max_row_tokens" in memory_saver:
        original = saver._backward
        saver._backward = lambda *a: (passes.append(len(a[1])), original(*a))[1]
        assert max(len(ids) for ids, _, _ in saver.encode(plans[0])) <= 40 < sum(
            len(ids) for ids, _, _ in saver.encode(plans[0]))  # the batches do need splitting
    a, b = plain.absorb_many(plans, [0, 1, 2]), saver.absorb_many(plans, [0, 1, 2])
    assert saver.model.is_activation_checkpointing == ("gradient_checkpointing" in memory_saver)
    for x, y in zip(a, b):
        assert (x.steps, x.tokens) == (y.steps, y.tokens)
        assert x.first_loss == pytest.approx(y.first_loss, rel=1e-5) and x.last_loss == pytest.approx(y.last_loss,
                                                                                                     rel=1e-4)
    torch.testing.assert_close(plain.bank.weights, saver.bank.weights, rtol=1e-4, atol=5e-5)
    assert not passes or len(passes) > a[0].steps  # more passes than steps: the batches were split


def test_packed_rows_carry_no_dense_mask_and_compute_each_sequence_as_if_alone(tiny_model_dir):
    """A dense (K, 1, w, w) mask was built on the host every step (GBs for ARC's 16k-token rows, and no
    flash kernel): the packing now travels in the positions alone."""
    student = make_student(tiny_model_dir)
    data = student.encode(plan())
    batch = student._rows([data[:2], data[2:]])
    assert batch["attention_mask"] is None
    with torch.no_grad():
        packed = student.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                               use_cache=False).logits
        ids = data[1][0]
        alone = student.model(input_ids=torch.tensor([ids]), use_cache=False).logits
    start = len(data[0][0])
    torch.testing.assert_close(packed[0, start:start + len(ids)], alone[0], rtol=1e-4, atol=1e-5)


def test_scoring_many_instances_runs_in_generations_of_bounded_size(tiny_model_dir):
    """A CPT adapter answers every held-out question: at paper scale 200 passages × 5 questions in one
    generation. inner.score_batch_tokens cuts it into several; the answers are the same."""
    insts = KnowledgeDomain().load("builtin", "train[:4]")
    whole = make_student(tiny_model_dir)
    small = make_student(tiny_model_dir, score_batch_tokens=64)
    calls = []
    original = small.generate
    small.generate = lambda prompts, *a: (calls.append(len(prompts)), original(prompts, *a))[1]
    same = [d["prediction"] for s in whole.score_many(insts, [0] * 4) for d in s.details]
    assert [d["prediction"] for s in small.score_many(insts, [0] * 4) for d in s.details] == same
    assert len(calls) == 4  # one instance per generation: 64 tokens hold no more


def test_each_instance_is_answered_within_its_own_token_budget(tiny_model_dir):
    """Instances scored in one generation shared its largest budget (ARC sizes it per task), so a score
    depended on which instances shared its chunk and differed from its baseline's, measured alone."""
    from dataclasses import replace

    class Budgets(KnowledgeDomain):
        def queries(self, instance):
            q = super().queries(instance)
            return replace(q, max_new_tokens=3 if instance.id.endswith("0") else 8, stop=None)

    student = make_student(tiny_model_dir)
    student.chat = False
    # greedy: the first n tokens of a longer answer are the n-token answer
    prompts = ["hello there", "what is the lamp"]
    assert student.generate(prompts, 8, None, limits=[3, 8]) == [student.generate(prompts[:1], 3, None)[0],
                                                                  student.generate(prompts[1:], 8, None)[0]]
    assert student.generate(prompts[:1], 3, None) != student.generate(prompts[:1], 8, None)  # the budget bites
    student.domain = Budgets()
    calls = []
    generate = student.generate
    student.generate = lambda p, new, stop, limits=None: calls.append((new, limits)) or generate(p, new, stop, limits)
    short, long_ = KnowledgeDomain().load("builtin", "heldout[:2]")
    student.score_many([short, long_], [0, 1])
    width = max(len(Budgets().queries(i).prompts) for i in (short, long_))
    assert calls == [(8, [3] * width + [8] * width)]


def test_lora_dropout_repeats_with_the_same_seeds(tiny_model_dir):
    """Dropout drew its masks from the unseeded global generator: the same plan and seed trained twice
    gave two adapters."""
    student = make_student(tiny_model_dir, lora_dropout=0.3, lr=3e-2)
    student.absorb(plan(), seed=0)
    first = student.bank.weights[0].clone()
    student.absorb(plan(), seed=0)
    torch.testing.assert_close(student.bank.weights[0], first, rtol=0, atol=0)
    plain = make_student(tiny_model_dir, lr=3e-2)
    plain.absorb(plan(), seed=0)
    assert not torch.equal(plain.bank.weights[0], first)  # the masks did act
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    student.absorb(plan(), seed=0)
    assert torch.equal(torch.rand(3), expected)  # the global stream goes on as if no inner loop had run
