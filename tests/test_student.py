import pytest
import torch

from seal.shared.config import InnerConfig, ModelConfig, SamplingConfig
from seal.shared.domain import Example, TrainingPlan
from seal.shared.knowledge import KnowledgeDomain
from seal.shared.models import load_model
from seal.student import InnerLoopError, Student
from seal.teacher import Teacher


def make_student(model_dir, **inner):
    model, tok = load_model(ModelConfig(name=str(model_dir)))
    cfg = InnerConfig(**{"lora_r": 4, "lora_alpha": 8, "epochs": 3, "lr": 1e-2, "batch_size": 2, **inner})
    return Student(model, tok, cfg, KnowledgeDomain(), chat=True)


def plan(texts=("Velmora Lighthouse\nThe lamp can be seen from 31 kilometres away.",
                "Velmora Lighthouse\nIts keeper is Oda Brannick.", "Velmora Lighthouse\nBuilt in 1874.")):
    return TrainingPlan(examples=[Example("", t) for t in texts])


def lora_snapshot(student):
    return torch.cat([p.detach().flatten().clone() for p in student.lora_params])


def test_absorb_lowers_the_loss_and_only_trains_lora(tiny_model_dir):
    student = make_student(tiny_model_dir, epochs=8)
    base = {n: p.detach().clone() for n, p in student.model.named_parameters() if "lora_" not in n}
    stats = student.absorb(plan(), seed=0)
    assert stats.steps == 8 * 2  # 3 sequences, batch 2 -> 2 steps per epoch
    assert stats.last_loss < stats.first_loss
    for n, p in student.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n


def test_seeded_reset_makes_absorb_reproducible(tiny_model_dir):
    student = make_student(tiny_model_dir)
    a = student.absorb(plan(), seed=1)
    wa = lora_snapshot(student)
    b = student.absorb(plan(), seed=1)
    assert torch.allclose(wa, lora_snapshot(student)) and a.last_loss == pytest.approx(b.last_loss)
    student.absorb(plan(), seed=2)
    assert not torch.allclose(wa, lora_snapshot(student))


def test_padding_is_masked_out_of_the_loss(tiny_model_dir):
    student = make_student(tiny_model_dir)
    data = student._encode(plan())
    assert len(data[0][0]) != len(data[1][0])
    student.reset_adapter(0)
    with torch.no_grad():
        alone = [student.model(**student._collate([d])).loss for d in data[:2]]
        n = [sum(1 for x in d[1][1:] if x != -100) for d in data[:2]]
        together = student.model(**student._collate(data[:2])).loss
    expected = (alone[0] * n[0] + alone[1] * n[1]) / (n[0] + n[1])
    assert together.item() == pytest.approx(expected.item(), rel=1e-5)


def test_prompt_tokens_are_masked_when_the_plan_says_so(tiny_model_dir):
    student = make_student(tiny_model_dir)
    p = TrainingPlan(examples=[Example("What is two plus two?", "four", chat=True)], loss_on_prompt=False)
    ((ids, labels),) = student._encode(p)
    answer = student.tokenizer("four", add_special_tokens=False)["input_ids"] + [student.tokenizer.eos_token_id]
    assert [x for x in labels if x != -100] == answer
    assert ids[-len(answer):] == answer
    assert "<|im_start|>user" in student.tokenizer.decode(ids)  # the chat template was applied


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
    adapted = student.domain.evaluate(inst, original)
    with student.model.disable_adapter():
        plain = student.domain.evaluate(inst, original)
    assert [d["prediction"] for d in plain.details] == [d["prediction"] for d in first.details]
    assert [d["prediction"] for d in adapted.details] != [d["prediction"] for d in first.details]


def test_evaluate_plan_rewards_are_gains_over_the_baseline(tiny_model_dir):
    student = make_student(tiny_model_dir)
    inst = KnowledgeDomain().load("builtin", "train[:1]")[0]
    outcomes = student.evaluate_plan(inst, plan(), seeds=[0, 1])
    base = student.baseline(inst).value
    assert [o.seed for o in outcomes] == [0, 1]
    for o in outcomes:
        assert o.reward == pytest.approx(o.score - base)
        assert len(o.details) == len(inst.questions)


def test_non_finite_loss_is_an_inner_loop_error(tiny_model_dir):
    student = make_student(tiny_model_dir, lr=float("inf"), max_grad_norm=0.0)
    with pytest.raises(InnerLoopError, match="non-finite training loss"):
        student.absorb(plan(), seed=0)


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
    with pytest.raises(ValueError, match="backend 'vllm' is not available"):
        Teacher(student.model, student.tokenizer, SamplingConfig(backend="vllm"), domain, chat=True)
