"""GRPO through TRL's GRPOTrainer with the student's gain as the reward (tiny models, CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from seal.shared.config import InnerConfig, ModelConfig
from seal.shared.config_parser import parse_config, to_dict
from seal.shared.domain import Score, SelfEdit, SelfEditError, make_domain
from seal.shared.knowledge import KnowledgeDomain
from seal.shared.models import load_model
from seal.shared.store import RunStore
from seal.student import Job, Student
from seal.teacher import StudentReward, run_grpo
from tests.conftest import REPO


class ChecksumDomain(KnowledgeDomain):
    """A test domain (registered by its import path, needing no edits elsewhere) whose score is a
    deterministic hash of the adapted student's answers: tiny random models never answer a question
    right, and a group of equal rewards gives GRPO no advantage to follow."""

    def parse(self, instance, text):
        if not text.strip():
            raise SelfEditError("empty self-edit")
        return SelfEdit(text=text, items=[text.strip()])

    def grade(self, instance, answers):
        value = sum(ord(c) for a in answers for c in a) % 97 / 97
        return Score(value=value, details=[{"prediction": a, "score": value} for a in answers])


def test_reward_is_one_gain_per_completion_and_invalid_text_scores_zero(tiny_model_dir):
    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    domain = KnowledgeDomain()
    student = Student(model, tok, InnerConfig(lora_r=4, lora_alpha=8, epochs=2, lr=3e-2, seeds=[0],
                                              parallel_adapters=4), domain, chat=True)
    insts = domain.load("builtin", "train[:2]")
    reward = StudentReward(domain, student, insts, seeds=[0, 1])
    ids = [insts[0].id, insts[0].id, insts[1].id]
    completions = [[{"role": "assistant", "content": "Hesper Quill built the lighthouse in 1874."}],
                   [{"role": "assistant", "content": "x"}],  # unusable: reward 0
                   [{"role": "assistant", "content": "Lanterns shaped like herons are carried."}]]
    out = reward(prompts=["p"] * 3, completions=completions, instance_id=ids)
    assert len(out) == 3 and out[1] == 0.0
    p = domain.plan(insts[0], domain.parse(insts[0], completions[0][0]["content"]))
    expected = sum(r.reward for r in student.run([Job(insts[0], p, seed) for seed in (0, 1)])) / 2
    assert out[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="instance ids"):
        reward(prompts=["p"], completions=["a", "b"], instance_id=[insts[0].id])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["teacher_student", "self"])
def test_grpo_steps_reach_the_trainer_and_move_the_teacher(tiny_model_dir, tiny_qwen_dir, tmp_path, mode):
    args = ["--config", str(REPO / "recipes/knowledge/smollm2-135m-grpo.yaml"), "--teacher.name", str(tiny_model_dir),
            "--output_dir", str(tmp_path / "run"), "--threads", "1", "--data.train_split", "train[:2]",
            "--sampling.max_new_tokens", "24", "--inner.epochs", "2", "--inner.lr", "3e-2", "--outer.grpo_steps", "3",
            "--outer.lr", "1e-3", "--mode", mode, "--domain.name", "tests.test_grpo:ChecksumDomain"]
    if mode == "teacher_student":
        args += ["--student.name", str(tiny_qwen_dir)]
    cfg = parse_config(args)
    domain = make_domain(cfg.domain)
    assert isinstance(domain, ChecksumDomain)
    store = RunStore(cfg.output_dir, to_dict(cfg))
    train = domain.load("builtin", cfg.data.train_split)
    (stats,) = run_grpo(cfg, domain, store, train)
    rows = [json.loads(line) for line in (tmp_path / "run" / "grpo_rewards.jsonl").read_text().splitlines()]
    per_call = {}
    for r in rows:
        per_call.setdefault(r["call"], []).append(r["reward"])
    assert len(per_call) == stats.steps == 3
    assert len({r["reward"] for r in rows}) > 1  # the group rewards differ: GRPO has advantages to follow
    assert all(len(v) == cfg.sampling.k * cfg.outer.grpo_prompts_per_step for v in per_call.values())
    # what TRL logged as the reward is what our inner loop computed
    ours = [sum(v) / len(v) for _, v in sorted(per_call.items())]
    assert stats.logged_rewards == pytest.approx(ours, abs=1e-6)
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "teachers" / "round1" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the student never changed during the round: one baseline per instance
    baselines = [json.loads(line) for line in (tmp_path / "run" / "baselines.jsonl").read_text().splitlines()]
    assert len(baselines) == 2 and len({b["student"] for b in baselines}) == 1


def test_grpo_options_are_checked():
    from seal.shared.config import ConfigError

    with pytest.raises(ConfigError, match="outer.algorithm"):
        parse_config(["--outer.algorithm", "ppo"])


def test_a_value_grpo_refuses_is_a_config_error(tmp_path):
    """GRPOConfig refuses some values in its __post_init__ (ValueError), which ended the run in a traceback
    after both models had loaded."""
    from seal.shared.config import ConfigError
    from seal.shared.config_parser import parse_config
    from seal.teacher.grpo import grpo_args

    cfg = parse_config(["--outer.algorithm", "grpo", "--outer.trl_args", "{generation_batch_size: 7}"])
    with pytest.raises(ConfigError, match=r"outer.trl_args: generation_batch_size \(7\) must be divisible"):
        grpo_args(cfg, str(tmp_path), True, 0, [])


def test_a_lora_teacher_under_zero3_checkpoints_reentrantly_where_transformers_reads_it(tmp_path, monkeypatch):
    """TRL forces reentrant checkpointing for PEFT under ZeRO-3 (needed for correct gradients) but writes it
    under the deprecated `gradient_checkpointing_kwargs` after the aliases were resolved: transformers 5's
    Trainer reads `activation_checkpointing_kwargs` and ran non-reentrant. It is set there, and TRL's own
    write (trl/trainer/grpo_trainer.py) lands in the same dict."""
    from seal.shared.config_parser import parse_config
    from seal.teacher.grpo import grpo_args

    cfg = parse_config(["--outer.algorithm", "grpo"])
    assert grpo_args(cfg, str(tmp_path), True, 0, []).activation_checkpointing_kwargs is None  # no DeepSpeed
    # the plugin registers ZeRO-3 with transformers globally: off again after this test, whatever happens
    monkeypatch.setattr("transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref", None)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    args = grpo_args(cfg, str(tmp_path), True, 0, [])
    assert args.deepspeed_plugin.zero_stage == 3 and args.activation_checkpointing_kwargs == {"use_reentrant": True}
    args.gradient_checkpointing_kwargs = args.gradient_checkpointing_kwargs or {}  # what TRL does
    args.gradient_checkpointing_kwargs["use_reentrant"] = True
    assert args.activation_checkpointing_kwargs is args.gradient_checkpointing_kwargs
    full = parse_config(["--outer.algorithm", "grpo", "--outer.lora", "false"])
    assert grpo_args(full, str(tmp_path), True, 0, []).activation_checkpointing_kwargs is None  # TRL's rule: PEFT only


def test_the_teacher_update_takes_the_launchs_mixed_precision(tmp_path, monkeypatch):
    """Every GPU launch config asks for bf16: a float32 teacher's update passed bf16=False, which
    transformers overrides from ACCELERATE_MIXED_PRECISION without DeepSpeed and DeepSpeed refuses as a
    mismatch (the run stopped at its first teacher update). The launch decides; fp16 with a bfloat16
    teacher is refused before any model loads."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from seal.shared.config import ConfigError
    from seal.shared.config_parser import parse_config
    from seal.teacher.grpo import grpo_args
    from seal.teacher.trl_args import precision

    cfg = parse_config(["--outer.algorithm", "grpo"])  # a float32 teacher
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # no launch setting
    assert precision("float32", False) == {"bf16": False, "fp16": False}
    assert precision("bfloat16", False) == {"bf16": True, "fp16": False}
    monkeypatch.setattr("transformers.integrations.deepspeed._hf_deepspeed_config_weak_ref", None)
    for name, value in (("ACCELERATE_USE_DEEPSPEED", "true"), ("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"),
                        ("ACCELERATE_MIXED_PRECISION", "bf16")):
        monkeypatch.setenv(name, value)
    args = grpo_args(cfg, str(tmp_path), True, 0, [])
    assert args.bf16 and not args.fp16
    ds = HfTrainerDeepSpeedConfig(args.deepspeed_plugin.deepspeed_config)
    ds.trainer_config_process(args)  # what the Trainer does with the launch's DeepSpeed config
    assert ds.mismatches == []
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="mixed precision fp16 with teacher.dtype bfloat16"):
        precision("bfloat16", False)
    from seal.run import preflight
    from seal.shared.dist import Dist
    from seal.shared.knowledge import KnowledgeDomain

    with pytest.raises(ConfigError, match="mixed precision fp16"):  # at start-up, before any model loads
        preflight(parse_config(["--teacher.dtype", "bfloat16"]), KnowledgeDomain(), Dist())
