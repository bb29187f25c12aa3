"""The entry point as a user runs it: a subprocess over a tiny model and the built-in passages."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run(args, tmp_path, check=True):
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "seal.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tiny_args(model_dir, out, *extra):
    return ["--config", str(REPO / "recipes/knowledge/smollm2-135m.yaml"), "--teacher.name", str(model_dir),
            "--output_dir", str(out), "--threads", "1", "--data.train_split", "train[:2]",
            "--sampling.max_new_tokens", "24", "--inner.epochs", "2", "--inner.seeds", "[0, 1]",
            "--eval.enabled", "false",
            *extra]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_records_everything_and_resumes_without_redoing_work(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = run(tiny_args(tiny_model_dir, out), tmp_path)
    assert "| instance | baseline | mean reward | best reward | valid/k |" in proc.stdout
    assert "Velmora Lighthouse" in proc.stdout
    edits, records = read(out / "self_edits.jsonl"), read(out / "records.jsonl")
    assert len(edits) == 2 * 2 and {e["status"] for e in edits} <= {"ok", "invalid"}
    for e in edits:
        n = len([r for r in records if (r["instance"], r["index"]) == (e["instance"], e["index"])])
        assert n == (2 if e["status"] == "ok" else 1)
    for r in records:
        if r["status"] == "ok":
            assert r["reward"] == pytest.approx(r["score"] - r["baseline"])
            assert r["seconds"]["absorb"] > 0 and r["train"]["steps"] > 0
        else:
            assert r["reward"] == 0.0 and r["reason"]
    assert len(read(out / "baselines.jsonl")) == 2
    assert (out / "summary_round0.md").read_text().startswith("| instance |")
    run(tiny_args(tiny_model_dir, out), tmp_path)  # resume: nothing left to do
    assert read(out / "records.jsonl") == records and read(out / "self_edits.jsonl") == edits
    assert len(read(out / "baselines.jsonl")) == 2


def test_a_run_dir_of_another_config_is_refused(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    run(tiny_args(tiny_model_dir, out, "--data.train_split", "train[:1]", "--sampling.k", "1"), tmp_path)
    proc = run(tiny_args(tiny_model_dir, out, "--data.train_split", "train[:1]", "--sampling.k", "1",
                         "--inner.lr", "0.5"), tmp_path, check=False)
    assert proc.returncode == 2 and "different config" in proc.stderr and "inner.lr" in proc.stderr


@pytest.mark.parametrize("extra, message", [
    (["--inner.learning_rate", "1"], "unknown config key in section 'inner': learning_rate"),
    (["--data.source", "missing/passages.json"], "data file not found: missing/passages.json"),
    (["--domain.format", "haiku"], "unknown self-edit format 'haiku'"),
    (["--config", "nope.yaml"], "config file not found: nope.yaml"),
])
def test_bad_input_exits_2_with_a_specific_message(tmp_path, extra, message):
    proc = run(["--config", str(REPO / "recipes/knowledge/smollm2-135m.yaml"), "--output_dir", str(tmp_path / "r"),
                *extra], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_model_that_cannot_be_loaded_is_a_clear_error(tmp_path):
    proc = run(["--teacher.name", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "r")], tmp_path,
               check=False)
    assert proc.returncode == 2 and "cannot load model" in proc.stderr
