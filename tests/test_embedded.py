"""End to end on the embedded SmolLM2-135M-Instruct (slow: ~1-2 minutes on 2 CPU cores)."""

import json
import subprocess
import sys

import pytest

from seal.shared.config import ModelConfig
from seal.shared.models import embedded_model_dir, load_model, uses_chat_template
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_embedded_model_loads_from_the_cached_conversion(embedded_available):
    model, tok = load_model(ModelConfig())
    assert (embedded_model_dir() / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert uses_chat_template(ModelConfig(), tok)
    assert tok.eos_token == "<|im_end|>"


def test_the_demo_recipe_runs_a_round_on_the_embedded_model(embedded_available, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "seal.py"),
         "--config", str(REPO / "recipes/knowledge/smollm2-135m.yaml"),
         "--output_dir", str(out), "--data.train_split", "train[:1]", "--sampling.k", "1",
         "--sampling.max_new_tokens", "64", "--inner.epochs", "2", "--outer.rounds", "1", "--outer.epochs", "1",
         "--data.eval_split", "heldout[:1]", "--eval.conditions", "[no_update, context_only]", "--eval.cpt", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert record["status"] in ("ok", "invalid")
    if record["status"] == "ok":
        assert record["train"]["steps"] > 0 and record["train"]["last_loss"] < record["train"]["first_loss"]
    assert (out / "teachers" / "round1" / "model.safetensors").is_file()
    assert "| context_only |" in proc.stdout
