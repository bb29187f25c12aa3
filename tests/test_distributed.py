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


def args(model_dir, out):
    return [str(REPO / "recipes" / "seal.py"), "--config", str(REPO / "recipes/knowledge/smollm2-135m.yaml"),
            "--teacher.name", str(model_dir), "--output_dir", str(out), "--threads", "1",
            "--data.train_split", "train[:3]", "--sampling.max_new_tokens", "24", "--inner.epochs", "2",
            "--inner.seeds", "[0, 1]", "--inner.lr", "3e-2", "--outer.rounds", "1", "--eval.enabled", "false"]


def rows(out, table):
    found = []
    for path in sorted(out.glob(f"{table}*.jsonl")):
        found += [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
                  for line in path.read_text().splitlines()]
    return sorted(found, key=lambda r: json.dumps(r, sort_keys=True))


def test_two_processes_give_the_rewards_of_one(tiny_model_dir, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    single, multi = tmp_path / "single", tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args(tiny_model_dir, single)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([accelerate, "launch", "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"),
                           "--num_processes", "2", *args(tiny_model_dir, multi)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "2 process(es)" in proc.stderr
    # both ranks did work: rank 1 wrote its own files, and nothing was done twice
    assert (multi / "records.rank1.jsonl").exists() and (multi / "self_edits.rank1.jsonl").exists()
    for table in ("self_edits", "baselines", "records"):
        assert rows(multi, table) == rows(single, table), table
    assert len(rows(multi, "rounds")) == 1
    assert (multi / "teachers" / "round1" / "model.safetensors").is_file()
    assert not list((multi / "teachers").glob(".*"))


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_teacher_sft_under_deepspeed_saves_a_real_adapter_and_a_changed_teacher(tiny_model_dir, tmp_path, stage):
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    out = tmp_path / "ds"
    cmd = [accelerate, "launch", "--config_file", str(REPO / f"recipes/accelerate/deepspeed_{stage}.yaml"),
           "--num_processes", "2", "--mixed_precision", "no", *args(tiny_model_dir, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "deepspeed_shm_comm_op" in proc.stdout + proc.stderr  # the update really went through DeepSpeed
    # publish() refuses an empty adapter, so reaching a complete checkpoint means the adapter had weights
    (update,) = rows(out, "rounds")
    assert update["sft_steps"] > 0
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(out / "teachers" / "round1" / "model.safetensors"))
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) == 7 * 2  # every linear layer of both blocks took its merged LoRA update
