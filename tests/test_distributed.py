"""`accelerate launch --num_processes 2` on CPU (gloo): the inner loop is sharded, results meet in the store."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

VOLATILE = {"seconds", "sample_seconds"}


def args(model_dir, out, *extra):
    return [str(REPO / "recipes" / "seal.py"), "--config", str(REPO / "recipes/knowledge/smollm2-135m.yaml"),
            "--teacher.name", str(model_dir), "--output_dir", str(out), "--threads", "1",
            "--data.train_split", "train[:3]", "--sampling.max_new_tokens", "24", "--inner.epochs", "2",
            "--inner.seeds", "[0, 1]", "--inner.lr", "3e-2", "--outer.rounds", "1", "--eval.enabled", "false",
            *extra]


def rows(out, table):
    found = []
    for path in sorted(out.glob(f"{table}*.jsonl")):
        found += [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
                  for line in path.read_text().splitlines()]
    return sorted(found, key=lambda r: json.dumps(r, sort_keys=True))


def close(a, b) -> bool:
    """Equal, floats up to a relative 1e-4 (float summation order differs between layouts)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-7)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


# the conditions whose self-edits do not depend on the teacher update (which sees other batches under DDP)
SHARDED_EVAL = ["--eval.enabled", "true", "--data.eval_split", "heldout[:3]", "--eval.seeds", "[0, 1]",
                "--eval.cpt_epochs", "1", "--eval.conditions", "[no_update, context_only, base_teacher]"]


def test_two_processes_give_the_rewards_of_one(tiny_model_dir, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    single, multi = tmp_path / "single", tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args(tiny_model_dir, single, *SHARDED_EVAL)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([accelerate, "launch", "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"),
                           "--num_processes", "2", *args(tiny_model_dir, multi, *SHARDED_EVAL)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "2 process(es)" in proc.stderr
    # both ranks did work: rank 1 wrote its own files, and nothing was done twice
    assert (multi / "records.rank1.jsonl").exists() and (multi / "self_edits.rank1.jsonl").exists()
    assert (multi / "eval_records.rank1.jsonl").exists()  # the evaluation was sharded too
    for table in ("self_edits", "baselines", "records", "eval_self_edits"):
        assert rows(multi, table) == rows(single, table), table
    # the same scores; an evaluation cell's losses come from batches of other adapters (another chunking)
    assert close(rows(multi, "eval_records"), rows(single, "eval_records"))
    assert (multi / "eval.md").read_text() == (single / "eval.md").read_text()
    assert len(rows(multi, "rounds")) == 1
    assert (multi / "teachers" / "round1" / "model.safetensors").is_file()
    assert not list((multi / "teachers").glob(".*"))


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_teacher_sft_under_deepspeed_saves_a_real_adapter_and_a_changed_teacher(tiny_model_dir, tmp_path, stage):
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    out = tmp_path / "ds"
    # two rounds under ZeRO-3: after the first update every rank must load round 2's teacher whole (the
    # trainer's ZeRO-3 switch stayed on for all but the main process, which hung round 2)
    rounds = 2 if stage == "zero3" else 1
    # outer.grad_accum 2: a launch config that pins DeepSpeed's gradient_accumulation_steps makes the
    # trainer refuse any other (transformers/integrations/deepspeed.py fill_match)
    cmd = [accelerate, "launch", "--config_file", str(REPO / f"recipes/accelerate/deepspeed_{stage}.yaml"),
           "--num_processes", "2", "--mixed_precision", "no",
           *args(tiny_model_dir, out, "--outer.rounds", str(rounds), "--outer.grad_accum", "2")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "deepspeed_shm_comm_op" in proc.stdout + proc.stderr  # the update really went through DeepSpeed
    # publish() refuses an empty adapter, so reaching a complete checkpoint means the adapter had weights
    updates = rows(out, "rounds")
    assert len(updates) == rounds and all(u["sft_steps"] > 0 for u in updates)
    assert (out / "teachers" / f"round{rounds}" / "model.safetensors").is_file()
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(out / "teachers" / "round1" / "model.safetensors"))
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) == 7 * 2  # every linear layer of both blocks took its merged LoRA update


def test_a_zero3_partitioned_student_gives_the_rewards_of_a_whole_one(tiny_model_dir, tiny_qwen_dir, tmp_path):
    """inner.deepspeed: the student's weights are split over 2 ranks, which train and score different
    self-edits in lockstep (rank 0 holds 2 of the 3 instances, so rank 1 runs no-op passes and empty
    scorings), through a round and a sharded evaluation with CPT; with gradient checkpointing, which
    recomputes the gathered layers in the backward pass."""
    pytest.importorskip("deepspeed")
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    extra = ["--mode", "teacher_student", "--student.name", str(tiny_qwen_dir), "--student.dtype", "float32",
             "--student.device", "cpu", "--inner.parallel_adapters", "2", *SHARDED_EVAL]
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args(tiny_model_dir, whole, *extra)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([accelerate, "launch", "--config_file", str(REPO / "recipes/accelerate/deepspeed_zero3.yaml"),
                           "--num_processes", "2", "--mixed_precision", "no",
                           *args(tiny_model_dir, parted, *extra, "--inner.deepspeed", "true",
                                 "--inner.gradient_checkpointing", "true")],  # recomputed gathered layers
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "partitioned across 2 ranks by DeepSpeed ZeRO-3" in proc.stderr
    assert (parted / "records.rank1.jsonl").exists() and (parted / "eval_records.rank1.jsonl").exists()
    lines = [len((parted / f"baselines{rank}.jsonl").read_text().splitlines()) for rank in ("", ".rank1")]
    assert lines[1] < lines[0]  # unequal work per rank: rank 1 ran no-op passes while rank 0 measured
    for table in ("self_edits", "baselines", "records", "eval_self_edits", "eval_records"):
        # the same numbers, up to float summation order in the gathered layers (losses agree to ~1e-7)
        assert close(rows(parted, table), rows(whole, table)), table
    assert (parted / "eval.md").read_text() == (whole / "eval.md").read_text()


def test_a_partitioned_student_needs_a_zero3_launch(tiny_model_dir, tiny_qwen_dir, tmp_path):
    proc = subprocess.run([sys.executable, *args(tiny_model_dir, tmp_path / "run", "--mode", "teacher_student",
                                                 "--student.name", str(tiny_qwen_dir), "--inner.deepspeed", "true")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "inner.deepspeed: true needs a DeepSpeed ZeRO-3 launch: accelerate launch --config_file " \
           "recipes/accelerate/deepspeed_zero3.yaml" in proc.stderr


def test_grpo_with_a_partitioned_student_counts_every_ranks_rewards(tiny_model_dir, tiny_qwen_dir, tmp_path):
    """GRPO's reward function runs the lockstep student inside TRL's step on both ranks; the round's
    statistics cover the completions of both (one attempt id shared by the ranks)."""
    pytest.importorskip("deepspeed")
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    out = tmp_path / "grpo"
    cmd = [accelerate, "launch", "--config_file", str(REPO / "recipes/accelerate/deepspeed_zero3.yaml"),
           "--num_processes", "2", "--mixed_precision", "no", str(REPO / "recipes" / "seal.py"),
           "--config", str(REPO / "recipes/knowledge/smollm2-135m-grpo.yaml"), "--teacher.name", str(tiny_model_dir),
           "--output_dir", str(out), "--threads", "1", "--data.train_split", "train[:2]",
           "--sampling.max_new_tokens", "24", "--inner.epochs", "2", "--inner.seeds", "[0]", "--outer.grpo_steps", "2",
           "--mode", "teacher_student", "--student.name", str(tiny_qwen_dir), "--student.dtype", "float32",
           "--student.device", "cpu", "--inner.parallel_adapters", "2", "--inner.deepspeed", "true",
           "--eval.enabled", "false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    rewards = rows(out, "grpo_rewards")
    assert (out / "grpo_rewards.rank1.jsonl").exists() and len({r["attempt"] for r in rewards}) == 1
    (round_,) = rows(out, "rounds")
    assert round_["steps"] == 2 and round_["self_edits"] == len(rewards)


def test_the_process_group_gets_the_configured_timeout(monkeypatch):
    """NCCL gives up on a collective after 10 minutes by default; a rank that finished its CPT seeds waits
    longer than that for the others. accelerate passes `timeout` on to init_process_group."""
    from datetime import timedelta

    import accelerate

    from seal.shared.config_parser import parse_config
    from seal.shared.dist import init_dist

    seen = {}

    class State:
        process_index, num_processes = 1, 2

        def __init__(self, cpu: bool = False, **kwargs):  # accelerate.PartialState's signature
            seen.update(kwargs, cpu=cpu)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", State)
    cfg = parse_config(["--dist_timeout_minutes", "240"])
    dist = init_dist(cpu=False, timeout_minutes=cfg.dist_timeout_minutes)
    assert seen == {"cpu": False, "timeout": timedelta(minutes=240)} and (dist.rank, dist.world) == (1, 2)
