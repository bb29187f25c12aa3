import pytest
import torch

from seal.shared.config import ModelConfig, OuterConfig
from seal.shared.models import load_model
from seal.teacher import completion_logprob, learn, select
from seal.teacher.checkpoints import is_complete, read_update

REWARDS = {("a", 0): 0.2, ("a", 1): 0.5, ("a", 2): -0.1,
           ("b", 0): -0.3, ("b", 1): -0.2,
           ("c", 0): 0.0, ("c", 1): 0.25}
VALID = set(REWARDS) - {("c", 1)}  # c/1 was unparsable: never kept, whatever its reward


def test_best_of_k_keeps_one_per_instance_even_when_negative():
    assert sorted(select(REWARDS, VALID, "best_of_k")) == [("a", 1), ("b", 1), ("c", 0)]


def test_best_of_k_positive():
    assert select(REWARDS, VALID, "best_of_k_positive") == [("a", 1)]


def test_all_positive():
    assert select(REWARDS, VALID, "all_positive") == [("a", 0), ("a", 1)]


def test_all_solved_clones_every_solving_self_edit_even_where_the_untouched_model_solves_too():
    """BC-self-edit.py: reward 1 for a solved task, every such self-edit cloned. A gain-based filter drops
    b/0 and b/1: b is solved without any update, so their gains are 0."""
    from seal.shared.records import RewardRecord, edit_rewards, edit_scores

    records = [RewardRecord(0, "a", 0, 0, "ok", 0.0, 1.0, 1.0), RewardRecord(0, "a", 1, 0, "ok", 0.0, 0.0, 0.0),
               RewardRecord(0, "b", 0, 0, "ok", 1.0, 1.0, 0.0), RewardRecord(0, "b", 1, 0, "ok", 1.0, 1.0, 0.0),
               RewardRecord(0, "c", 0, None, "invalid", 1.0, None, 0.0)]
    rewards, scores, valid = edit_rewards(records), edit_scores(records), {r.key for r in records if r.ok}
    assert select(rewards, valid, "all_solved", scores=scores) == [("a", 0), ("b", 0), ("b", 1)]
    assert select(rewards, valid, "all_positive") == [("a", 0)]
    with pytest.raises(ValueError, match="needs the adapted scores"):
        select(rewards, valid, "all_solved")


def test_top_fraction_ranks_across_the_round():
    assert select(REWARDS, VALID, "top_fraction", 0.3) == [("a", 0), ("a", 1)]  # ceil(0.3 * 6) = 2: a1, a0
    assert select(REWARDS, VALID, "top_fraction", 0.5) == [("a", 0), ("a", 1), ("c", 0)]


def test_nothing_valid_keeps_nothing():
    assert select(REWARDS, set(), "best_of_k") == []


PAIRS = [("Let's read the following passage and write question and answer pairs about every fact in it.\n"
          "Passage:\nVelmora Lighthouse\nThe lamp burns colza oil.",
          "Question: What does the lamp burn?\nAnswer: colza oil"),
         ("Let's read the following passage and write question and answer pairs.\nPassage:\nTarsk Festival\n"
          "Lanterns are shaped like herons.", "Question: What shape are the lanterns?\nAnswer: herons")]


@pytest.mark.parametrize("lora", [True, False])
def test_sft_moves_the_teacher_towards_the_kept_self_edits(tiny_model_dir, tmp_path, lora):
    cfg = ModelConfig(name=str(tiny_model_dir))
    before, tok = load_model(cfg)
    chat = True
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
               for p, _ in PAIRS]
    lp_before = [completion_logprob(before, tok, p, c) for p, (_, c) in zip(prompts, PAIRS)]
    outer = OuterConfig(lr=3e-3, epochs=5, lora=lora, lora_r=8, lora_alpha=16)
    update = learn(cfg, chat, PAIRS, outer, tmp_path / "round1", seed=0)
    assert is_complete(update.path) and read_update(update.path)["examples"] == 2
    assert update.losses and update.losses[-1] < update.losses[0]
    after, _ = load_model(ModelConfig(name=str(update.path)))
    assert not any("lora_" in n for n, _ in after.named_parameters())  # merged into a plain checkpoint
    changed = [n for (n, a), (_, b) in zip(before.named_parameters(), after.named_parameters())
               if not torch.equal(a, b)]
    assert changed
    lp_after = [completion_logprob(after, tok, p, c) for p, (_, c) in zip(prompts, PAIRS)]
    assert all(a > b for a, b in zip(lp_after, lp_before)), (lp_before, lp_after)


def test_the_teacher_update_frees_its_teacher_before_it_returns(tiny_model_dir, tmp_path, monkeypatch):
    """A Trainer holds its model in reference cycles: without a collection the updated teacher and its
    optimizer state stayed in (GPU) memory while the next round loaded its models."""
    import weakref

    from seal.teacher import rest_em

    loaded = []

    def load(cfg):
        model, tok = load_model(cfg)
        loaded.append(weakref.ref(model))
        return model, tok
    monkeypatch.setattr(rest_em, "load_model", load)
    learn(ModelConfig(name=str(tiny_model_dir)), True, PAIRS, OuterConfig(lr=1e-3, epochs=1, lora_r=8, lora_alpha=16),
          tmp_path / "round1", seed=0)
    assert len(loaded) == 1 and loaded[0]() is None


def test_a_kept_self_edit_whose_prompt_fills_max_length_is_counted_out_and_said(tiny_model_dir, tmp_path, caplog):
    """TRL drops a row whose prompt alone fills max_length (no completion token left): the update recorded
    every kept self-edit as trained on; all of them dropped ended in a Trainer error."""
    import logging

    long_prompt = " ".join(["lanterns"] * 200)
    pairs = [PAIRS[0], (long_prompt, PAIRS[1][1])]
    outer = OuterConfig(lr=1e-3, epochs=1, lora_r=8, lora_alpha=16, max_length=160)
    with caplog.at_level(logging.WARNING, logger="seal"):
        update = learn(ModelConfig(name=str(tiny_model_dir)), True, pairs, outer, tmp_path / "round1", seed=0)
    assert update.examples == 1 and read_update(update.path)["examples"] == 1
    assert "1 of 2 kept self-edits are not trained on" in caplog.text
    with pytest.raises(ValueError, match="raise outer.max_length"):
        learn(ModelConfig(name=str(tiny_model_dir)), True, pairs[1:], outer, tmp_path / "round2", seed=0)


def test_a_full_finetune_of_a_bfloat16_teacher_trains_float32_weights(tiny_model_dir, tmp_path, monkeypatch):
    """outer.lora false without DeepSpeed: AdamW on bfloat16 weights rounds away every update below their
    resolution, so the update loads the teacher in float32 (the next round reads it in teacher.dtype); a
    LoRA update trains float32 adapters and loads the teacher as configured."""
    import dataclasses

    from seal.teacher import rest_em

    seen = []

    def load(cfg):
        seen.append(cfg.dtype)
        return load_model(cfg)
    monkeypatch.setattr(rest_em, "load_model", load)
    teacher = dataclasses.replace(ModelConfig(name=str(tiny_model_dir)), dtype="bfloat16")
    outer = OuterConfig(lr=1e-3, epochs=1, lora=False)
    learn(teacher, True, PAIRS, outer, tmp_path / "full", seed=0)
    learn(teacher, True, PAIRS, dataclasses.replace(outer, lora=True, lora_r=8, lora_alpha=16), tmp_path / "lora",
          seed=0)
    assert seen[0] == "float32" and "float32" not in seen[1:]  # the LoRA merge loads the base as configured too
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # DeepSpeed keeps float32 master weights itself
    from seal.teacher.trl_args import update_model

    assert update_model(teacher, lora=False).dtype == "bfloat16"


def test_sft_needs_examples(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no self-edits were kept"):
        learn(ModelConfig(name=str(tiny_model_dir)), True, [], OuterConfig(), tmp_path / "r", seed=0)


def test_in_teacher_student_mode_the_teacher_leaves_memory_before_the_inner_loops(tiny_model_dir, tiny_qwen_dir,
                                                                                   tmp_path):
    """The 72B recipe held the 7B teacher through every inner loop; once the round's self-edits are drawn
    its weights are freed (the teacher update reads the checkpoint from disk)."""
    import gc
    import weakref

    from seal.shared import KnowledgeDomain, RunStore
    from seal.shared.config_parser import parse_config
    from seal.teacher.rest_em import build_session, reward_round

    cfg = parse_config(["--teacher.name", str(tiny_model_dir), "--mode", "teacher_student", "--student.name",
                        str(tiny_qwen_dir), "--sampling.k", "1", "--sampling.max_new_tokens", "8", "--inner.epochs",
                        "1", "--inner.seeds", "[0]", "--inner.parallel_adapters", "1"])
    domain = KnowledgeDomain()
    session = build_session(cfg, domain)
    weight = weakref.ref(next(session.teacher.model.parameters()))
    records = reward_round(cfg, session, RunStore(tmp_path, {}), domain.load("builtin", "train[:1]"), 0)
    gc.collect()
    assert records and session.teacher.model is None and weight() is None
    with pytest.raises(RuntimeError, match="released"):
        session.teacher.sample(domain.load("builtin", "train[:1]"))
