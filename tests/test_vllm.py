"""The vLLM backends: contract tests against tests/fake_vllm (vLLM's API surface, run by transformers),
and real ones that run where a GPU and vLLM are installed."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

from seal.shared.config import InnerConfig, ModelConfig, SamplingConfig
from seal.shared.config_parser import parse_config
from seal.shared.knowledge import KnowledgeDomain
from seal.shared.models import load_model
from seal.student import Student
from seal.teacher.sampling import Teacher

FAKE = str(Path(__file__).parent / "fake_vllm")


@pytest.fixture
def fake_vllm(monkeypatch):
    # TRL's GRPO trainer imports its vLLM backend when vllm is importable, reading the installed version
    # (trl/import_utils.py `is_vllm_available`): the fake has none, so TRL is imported as without vLLM first
    import trl.trainer.grpo_trainer  # noqa: F401

    monkeypatch.syspath_prepend(FAKE)
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("vllm")
    module.CALLS.clear()
    from seal.shared import vllm_engine

    monkeypatch.setattr(vllm_engine, "_ENGINES", [])  # engines of another test's fake never serve this one
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # engine_args may set them
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)  # restored to unset after the test, whatever set it meanwhile
    yield module
    import gc

    gc.unfreeze()  # an in-process engine froze the heap (as vLLM's does): the next tests' garbage is collectable
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]  # the fake must not outlive its tests (TRL reads vllm's version at import)


def test_vllm_scoring_of_many_adapters_matches_the_transformers_path(fake_vllm, tiny_model_dir):
    from seal.student.vllm_scoring import VLLMScorer

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    domain = KnowledgeDomain()
    student = Student(model, tok, InnerConfig(lora_r=4, lora_alpha=8, epochs=3, lr=5e-2, parallel_adapters=3),
                      domain, chat=True)
    insts = domain.load("builtin", "train[:3]")
    student.absorb_many([domain.plan(i, None) for i in insts], [0, 1, 2])
    ours = student.score_many(insts)
    scorer = VLLMScorer(str(tiny_model_dir), tok, domain, True, max_lora_rank=8, max_loras=3,
                        engine_args={"gpu_memory_utilization": 0.5})
    theirs = scorer.score(insts, student.save_adapter, [0, 1, 2])
    assert [[d["prediction"] for d in s.details] for s in theirs] == [[d["prediction"] for d in s.details]
                                                                      for s in ours]
    init, gen = fake_vllm.CALLS[0], fake_vllm.CALLS[1]
    assert init["enable_lora"] and init["gpu_memory_utilization"] == 0.5  # the user's engine argument wins
    with pytest.raises(ValueError, match="max_lora_rank"):  # r=4 is not a rank vLLM serves
        fake_vllm.LLM(str(tiny_model_dir), enable_lora=True, max_lora_rank=4)
    assert gen["generate"] == sum(len(i.questions) for i in insts) and sorted(set(gen["loras"])) == [1, 2, 3]
    again = scorer.score(insts[:1], student.save_adapter, [0])  # new adapters get new ids (vLLM caches by id)
    assert fake_vllm.CALLS[-1]["loras"] == [4] * len(insts[0].questions) and again
    assert not any(scorer.workdir.iterdir())  # scored adapters leave the disk


def test_vllm_adapters_are_written_in_the_engine_dtype_once_per_slot(fake_vllm, tiny_model_dir):
    """A CPT adapter answers every held-out instance: one file for all its rows, in the model's dtype
    (fp32 copies per row were 200 × 323 MB at 7B)."""
    from safetensors.torch import load_file

    from seal.student.vllm_scoring import VLLMScorer

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    domain = KnowledgeDomain()
    student = Student(model, tok, InnerConfig(lora_r=8, lora_alpha=16, epochs=1, parallel_adapters=1), domain,
                      chat=True)
    insts = domain.load("builtin", "train[:3]")
    student.absorb(domain.plan(insts[0], None), seed=0)
    scorer = VLLMScorer(str(tiny_model_dir), tok, domain, True, max_lora_rank=8, max_loras=1, engine_args={},
                        adapter_dtype=torch.bfloat16)
    written = []

    def save(slot, path, dtype):
        student.save_adapter(slot, path, dtype)
        written.append({t.dtype for t in load_file(str(path / "adapter_model.safetensors")).values()})

    scorer.score(insts, save, [0, 0, 0])
    assert written == [{torch.bfloat16}] and not any(scorer.workdir.iterdir())


def test_vllm_teacher_samples_k_seeded_self_edits_per_instance(fake_vllm, tiny_model_dir):
    from seal.teacher.vllm_sampling import VLLMTeacher

    _, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    domain = KnowledgeDomain()
    cfg = SamplingConfig(k=3, max_new_tokens=10, temperature=1.0, vllm={"tensor_parallel_size": 1})
    teacher = VLLMTeacher(str(tiny_model_dir), tok, cfg, domain, chat=True)
    insts = domain.load("builtin", "train[:2]")
    both = teacher.sample(insts)
    assert [len(s.texts) for s in both] == [3, 3]
    assert teacher.sample(insts[1:])[0].texts == both[1].texts  # per-request seeds: batching changes nothing
    assert teacher.sample(insts[1:], round_=1)[0].texts != both[1].texts
    assert both[0].prompt == Teacher(None, tok, cfg, domain, chat=True).prompt(insts[0])


def test_choosing_vllm_without_vllm_is_a_clear_error(tiny_model_dir, monkeypatch, tmp_path):
    from seal.teacher.rest_em import build_session

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    cfg = parse_config(["--teacher.name", str(tiny_model_dir), "--sampling.backend", "vllm"])
    with pytest.raises(ImportError, match="the vllm backend needs vLLM"):
        build_session(cfg, KnowledgeDomain())


needs_gpu_vllm = pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                                    reason="needs a CUDA GPU and vLLM")


@pytest.mark.gpu
@needs_gpu_vllm
def test_real_vllm_teacher_and_multi_lora_scoring(tiny_model_dir, tmp_path):
    """On a GPU machine with vLLM: the real engine behind both backends, on the embedded model."""
    from seal.shared import vllm_engine
    from seal.shared.models import resolve
    from seal.student.vllm_scoring import VLLMScorer
    from seal.teacher.vllm_sampling import VLLMTeacher

    model, tok = load_model(ModelConfig(device="cuda"))
    domain = KnowledgeDomain()
    insts = domain.load("builtin", "train[:2]")
    teacher = VLLMTeacher(resolve("embedded"), tok, SamplingConfig(k=2, max_new_tokens=32,
                                                                    vllm={"gpu_memory_utilization": 0.3}),
                          domain, chat=True)
    assert all(len(s.texts) == 2 for s in teacher.sample(insts))
    teacher.release()
    vllm_engine.dispose(vllm_engine._ENGINES.pop())  # vLLM allows one sleep-mode engine per process
    student = Student(model, tok, InnerConfig(lora_r=8, lora_alpha=16, epochs=2, parallel_adapters=2), domain, True)
    student.absorb_many([domain.plan(i, None) for i in insts], [0, 1])
    scorer = VLLMScorer(resolve("embedded"), tok, domain, True, 8, 2, {"gpu_memory_utilization": 0.3})
    scores = scorer.score(insts, student.save_adapter, [0, 1])
    assert len(scores) == 2 and all(0 <= s.value <= 1 for s in scores)


def test_b4_with_vllm_scoring_the_baseline_comes_from_vllm_too(fake_vllm, tiny_model_dir):
    """The reward subtracts the baseline from the adapted score: both from one engine and decoding."""
    from seal.student.vllm_scoring import VLLMScorer

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    domain = KnowledgeDomain()
    scorer = VLLMScorer(str(tiny_model_dir), tok, domain, True, max_lora_rank=8, max_loras=2,
                        engine_args={"gpu_memory_utilization": 0.5})
    student = Student(model, tok, InnerConfig(lora_r=8, lora_alpha=16, epochs=1, parallel_adapters=2), domain,
                      chat=True, scorer=scorer)
    inst = domain.load("builtin", "train[:1]")[0]
    calls = len(fake_vllm.CALLS)
    base = student.baseline(inst)
    (call,) = fake_vllm.CALLS[calls:]
    assert call["loras"] == [None] * len(inst.questions)  # the base model, through the vLLM engine
    with student.adapters_off():
        assert [d["prediction"] for d in base.details] == \
            [d["prediction"] for d in domain.evaluate(inst, student.generate).details]


def test_the_lora_rank_vllm_serves_is_chosen_and_checked_at_config_time():
    from seal.shared.config import ConfigError

    assert InnerConfig(lora_r=4).vllm_lora_rank == 8 and InnerConfig(lora_r=128).vllm_lora_rank == 128
    with pytest.raises(ConfigError, match="max_lora_rank 24: vLLM takes one of 1, 8, 16"):
        InnerConfig(lora_r=16, score_backend="vllm", vllm={"max_lora_rank": 24})
    with pytest.raises(ConfigError, match="must hold inner.lora_r 64"):
        InnerConfig(lora_r=64, score_backend="vllm", vllm={"max_lora_rank": 32})
    with pytest.raises(ConfigError, match="up to 512"):
        InnerConfig(lora_r=600, score_backend="vllm")


@pytest.mark.parametrize("section, args, key", [("sampling", {"seed": 3}, "sampling.seed"),
                                                ("sampling", {"model": "x"}, "teacher.name"),
                                                ("sampling", {"revision": "v2"}, "teacher.revision"),
                                                ("inner", {"enable_lora": False}, "inner.score_backend"),
                                                ("inner", {"revision": "v2"}, "student.revision")])
def test_engine_arguments_seal_sets_itself_are_refused_at_config_time(section, args, key):
    """vllm.LLM(model=..., seed=..., **args) with `seed` in args is a duplicate-keyword TypeError, after
    every model has loaded; the config names the key to use instead."""
    from seal.shared.config import ConfigError

    with pytest.raises(ConfigError, match=f"{section}.vllm.{next(iter(args))}: SEAL sets it from {key}"):
        parse_config([f"--{section}.vllm", str(args).replace("'", "")])


def test_what_vllm_refuses_at_engine_start_or_first_request_is_refused_at_config_time():
    """vLLM 0.30 samples at temperatures up to 2 (vllm/sampling_params.py) and allows one cumem-allocator
    engine per process (vllm/v1/worker/gpu_worker.py), which SEAL keeps to for sleep-mode engines only:
    both are refused before any model loads; transformers sampling takes a higher temperature."""
    from seal.shared.config import ConfigError

    with pytest.raises(ConfigError, match="sampling.temperature 2.5: vLLM samples at temperatures up to 2"):
        parse_config(["--sampling.backend", "vllm", "--sampling.temperature", "2.5"])
    with pytest.raises(ConfigError, match="eval.temperature 3.0: vLLM"):
        parse_config(["--sampling.backend", "vllm", "--eval.temperature", "3.0"])
    assert parse_config(["--sampling.temperature", "2.5"]).sampling.temperature == 2.5
    assert parse_config(["--sampling.backend", "vllm", "--sampling.temperature", "2.0"]).sampling.temperature == 2.0
    for section in ("sampling", "inner"):
        with pytest.raises(ConfigError, match=f"{section}.vllm.enable_cumem_allocator without sleep mode"):
            parse_config([f"--{section}.vllm", "{enable_cumem_allocator: true, enable_sleep_mode: false}"])
        parse_config([f"--{section}.vllm", "{enable_cumem_allocator: true}"])  # what sleep mode turns on anyway


def bos_tokenizer(model_dir, tmp_path):
    """The tiny tokenizer as Llama 3's behaves: BOS added to every encoding, and a chat template that
    writes BOS itself."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)])
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    tok.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_the_fake_refuses_the_requests_vllm_refuses(fake_vllm, tiny_model_dir):
    """vllm/sampling_params.py `_verify_args` and vllm/lora/request.py `__post_init__`: a fake that took these
    would let a request through that the real engine rejects."""
    from vllm.exceptions import VLLMValidationError
    from vllm.lora.request import LoRARequest

    for bad in ({"n": 0}, {"temperature": -0.1}, {"temperature": 2.5}, {"temperature": float("nan")}, {"top_p": 0.0},
                {"top_p": 1.5}, {"max_tokens": 0}):
        with pytest.raises(VLLMValidationError):  # not a ValueError in vLLM 0.30 (vllm/exceptions.py)
            fake_vllm.SamplingParams(**bad)
    with pytest.raises(ValueError, match="id must be > 0"):
        LoRARequest("seal-0", 0, "/some/adapter")
    with pytest.raises(AssertionError, match="lora_path cannot be empty"):
        LoRARequest("seal-1", 1)
    fake_vllm.SamplingParams(n=5, temperature=1.0, top_p=0.95, max_tokens=512, seed=3, stop=["\n"])  # SEAL's own
    LoRARequest("seal-1", 1, "/some/adapter")
    first = fake_vllm.LLM(str(tiny_model_dir), enable_cumem_allocator=True)  # noqa: F841 (alive)
    with pytest.raises(AssertionError, match="one instance per process"):
        fake_vllm.LLM(str(tiny_model_dir), enable_sleep_mode=True)


def test_no_engine_is_asked_for_more_than_the_models_context(fake_vllm, tiny_model_dir):
    """vLLM refuses a max_model_len above the model's context (vllm/config/model.py
    `_get_and_verify_max_len`) at engine start, and suggests VLLM_ALLOW_LONG_MAX_MODEL_LEN (NaNs past the
    positions). A teacher prompt that cannot fit is refused by name before any engine starts, as the
    transformers teacher refuses it."""
    from transformers import AutoTokenizer

    from seal.shared.domain import DataError
    from seal.shared.models import vllm_prompt
    from seal.teacher.vllm_sampling import VLLMTeacher

    with pytest.raises(ValueError, match="VLLM_ALLOW_LONG_MAX_MODEL_LEN"):
        fake_vllm.LLM(str(tiny_model_dir), max_model_len=513)  # the tiny model has 512 positions
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    domain = KnowledgeDomain()
    inst = domain.load("builtin", "train[:1]")[0]
    with pytest.raises(DataError, match="exceeds the teacher's 512 positions"):
        VLLMTeacher(str(tiny_model_dir), tok, SamplingConfig(k=1, max_new_tokens=500), domain, chat=True,
                    instances=[inst])
    assert not [c for c in fake_vllm.CALLS if "init" in c]
    VLLMTeacher(str(tiny_model_dir), tok, SamplingConfig(k=1, max_new_tokens=200), domain, chat=True,
                instances=[inst])  # within the 512 positions: an engine of that length starts
    prompt = len(vllm_prompt(tok, domain.teacher_prompt(inst), True)["prompt_token_ids"])
    assert [c["max_model_len"] for c in fake_vllm.CALLS if "init" in c] == [prompt + 200]


def test_the_context_vllm_accepts_is_derived_from_the_config_as_vllm_derives_it(tiny_model_dir, tmp_path):
    """vLLM takes the smallest of the config's length keys, model_max_length overriding them
    (vllm/transformers_utils/model_arch_config_convertor.py): a teacher checked against
    max_position_embeddings alone would pass a length vLLM refuses."""
    import json

    from seal.shared.vllm_engine import context_length

    assert context_length(str(tiny_model_dir)) == 512
    for extra, expected in (({"seq_length": 300}, 300), ({"seq_length": 300, "model_max_length": 1000}, 1000)):
        config = json.loads((tiny_model_dir / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**config, **extra}))
        assert context_length(str(tmp_path)) == expected


def test_vllm_gets_the_token_ids_the_transformers_path_uses(fake_vllm, tiny_model_dir, tmp_path):
    """A chat-formatted string already starts with BOS; vLLM tokenises strings with special tokens, so
    handing it the string gives two (vllm-project/vllm#27486). It gets token ids instead."""
    from seal.shared.models import format_prompt
    from seal.student.vllm_scoring import VLLMScorer
    from seal.teacher.vllm_sampling import VLLMTeacher

    tok = bos_tokenizer(tiny_model_dir, tmp_path)
    domain = KnowledgeDomain()
    inst = domain.load("builtin", "train[:1]")[0]
    text = format_prompt(tok, domain.teacher_prompt(inst), True)
    as_string = fake_vllm.LLM(str(tiny_model_dir))._ids(text)
    assert as_string[:2] == [tok.bos_token_id] * 2  # the fake is as strict as vLLM: a string gets a second BOS
    hf = tok(text, add_special_tokens=False)["input_ids"]  # what teacher/sampling.py feeds generate
    VLLMTeacher(str(tiny_model_dir), tok, SamplingConfig(k=1, max_new_tokens=2), domain, chat=True).sample([inst])
    assert fake_vllm.CALLS[-1]["prompt_token_ids"] == [hf]
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    scorer = VLLMScorer(str(tiny_model_dir), tok, domain, True, max_lora_rank=8, max_loras=1, engine_args={})
    scorer.score([inst], None, [None])
    q = domain.queries(inst).prompts[0]
    assert fake_vllm.CALLS[-1]["prompt_token_ids"][0] == tok(format_prompt(tok, q, True),
                                                             add_special_tokens=False)["input_ids"]


def test_the_gpu_install_is_one_extra_with_deepspeed_and_vllm_through_the_pins():
    """The ZeRO recipes need DeepSpeed, which `.[test]` does not install: `.[gpu]` brings both, through
    constraints.txt (an unpinned install took the newest vLLM, which wants another torch and transformers
    and is outside TRL's supported range); the pinned vLLM satisfies the extra's range."""
    import tomllib
    from packaging.requirements import Requirement

    from tests.conftest import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = {Requirement(dep).name: Requirement(dep).specifier for dep in extras["gpu"]}
    assert {"deepspeed", "vllm"} <= set(wanted)
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name, spec in wanted.items():
        assert name in pins and spec.contains(pins[name]), (name, spec, pins.get(name))
    assert "pip install -c constraints.txt -e '.[gpu,test]'" in (REPO / "README.md").read_text()


@pytest.fixture
def small_gpu(fake_vllm, tiny_model_dir, monkeypatch):
    """A simulated GPU half taken by the run's transformers models, with room for a teacher engine whose
    KV cache holds the prompts it will see plus max_new_tokens, but not the model's whole context."""
    from seal.shared import vllm_engine
    from seal.shared.models import vllm_prompt

    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    domain = KnowledgeDomain()
    insts = domain.load("builtin", "train[:2]")
    needed = max(len(vllm_prompt(tok, domain.teacher_prompt(i), True)["prompt_token_ids"]) for i in insts) + 10
    cfg = model.config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert needed + 40 < cfg.max_position_embeddings  # the model's context would not fit: the test can fail
    free = int((weights + (needed + 40) * per_token) / 0.9)
    fake_vllm.DEVICE = {"total": 2 * free, "free": free}
    monkeypatch.setattr(vllm_engine, "device_memory", lambda: (fake_vllm.DEVICE["free"], fake_vllm.DEVICE["total"]))
    yield tok, domain, insts
    fake_vllm.DEVICE = None


def test_a_vllm_engine_beside_the_models_is_sized_from_free_memory_and_its_prompts(fake_vllm, small_gpu,
                                                                                    tiny_model_dir):
    """vLLM reserves gpu_memory_utilization (0.92 by default) of the *total* memory and fails when that is not free,
    then fails when the model's whole context does not fit its KV cache; SEAL asks for a share of what is
    free and a max_model_len of the longest prompt plus max_new_tokens."""
    from seal.teacher.vllm_sampling import VLLMTeacher

    tok, domain, insts = small_gpu
    cfg = SamplingConfig(k=2, max_new_tokens=10)
    with pytest.raises(ValueError, match="Free memory on device"):  # what vllm.LLM(model) alone does here
        fake_vllm.LLM(str(tiny_model_dir))
    with pytest.raises(ValueError, match="KV cache is needed"):  # a fitting share, but the whole context
        fake_vllm.LLM(str(tiny_model_dir), gpu_memory_utilization=0.45)
    teacher = VLLMTeacher(str(tiny_model_dir), tok, cfg, domain, chat=True, instances=insts)
    assert [len(s.texts) for s in teacher.sample(insts)] == [2, 2]
    init = fake_vllm.CALLS[-2]
    assert init["max_model_len"] == teacher.max_model_len and init["gpu_memory_utilization"] == 0.9 * 0.5


def test_every_rank_gets_its_engine_on_its_own_gpu(fake_vllm, tiny_model_dir, monkeypatch):
    """vLLM's single-process executor puts the engine on the first GPU whatever the rank; the
    external_launcher backend (TRL's colocate mode) takes each rank's LOCAL_RANK device."""
    from seal.teacher.vllm_sampling import VLLMTeacher

    _, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        VLLMTeacher(str(tiny_model_dir), tok, SamplingConfig(k=1, max_new_tokens=4), KnowledgeDomain(), chat=True)
        assert fake_vllm.CALLS[-1]["device"] == f"cuda:{rank}"


def test_the_teacher_engine_hands_its_memory_back_before_the_inner_loops(fake_vllm, small_gpu, tiny_model_dir,
                                                                         tmp_path):
    """Once a round's self-edits are drawn the engine sleeps at level 2 (it samples no more; deleting an
    engine does not reliably free its memory) and the student trains in that memory."""
    from seal.shared import RunStore
    from seal.teacher.rest_em import build_session, reward_round

    tok, domain, insts = small_gpu
    cfg = parse_config(["--teacher.name", str(tiny_model_dir), "--sampling.backend", "vllm", "--sampling.k", "1",
                        "--sampling.max_new_tokens", "10", "--inner.epochs", "1", "--inner.seeds", "[0]",
                        "--inner.parallel_adapters", "1"])
    session = build_session(cfg, domain, instances=insts)
    free_after_start = fake_vllm.DEVICE["free"]
    reward_round(cfg, session, RunStore(tmp_path, {}), insts, 0)
    assert session.teacher.released and session.teacher.llm.asleep and session.teacher.llm.dropped
    assert fake_vllm.DEVICE["free"] > free_after_start  # its share is back while the student trains
    with pytest.raises(RuntimeError, match="released"):
        session.teacher.sample(insts[:1])


def test_the_scoring_engine_sleeps_between_scorings(fake_vllm, small_gpu, tiny_model_dir):
    """The scoring engine and the student's training take turns on the GPU: asleep (level 1, weights kept
    in host memory) while adapters train, awake to score them, and a query longer than its context is a
    clear error rather than vLLM's rejection of the whole chunk."""
    from seal.student.vllm_scoring import VLLMScorer

    tok, domain, insts = small_gpu
    free = fake_vllm.DEVICE["free"]
    scorer = VLLMScorer(str(tiny_model_dir), tok, domain, True, max_lora_rank=8, max_loras=1, engine_args={},
                        max_model_len=200)
    free -= fake_vllm.CONTEXT  # what an engine asleep keeps
    assert scorer.llm.asleep and fake_vllm.DEVICE["free"] == free
    assert scorer.score(insts[:1], None, [None]) and scorer.llm.asleep and fake_vllm.DEVICE["free"] == free
    with pytest.raises(AssertionError, match="one instance per process"):  # vLLM's own refusal
        VLLMScorer(str(tiny_model_dir), tok, domain, True, max_lora_rank=8, max_loras=1, engine_args={},
                   max_model_len=200)
    scorer.close()  # as a mode-self round ends: the next round's student builds its own engine
    assert scorer.llm is None and fake_vllm.DEVICE["free"] == free + fake_vllm.CONTEXT
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score(insts[:1], None, [None])
    tight = VLLMScorer(str(tiny_model_dir), tok, domain, True, max_lora_rank=8, max_loras=1, engine_args={},
                       max_model_len=20)
    with pytest.raises(ValueError, match="exceeds the scoring engine's max_model_len 20"):
        tight.score(insts[:1], None, [None])


def test_one_engine_serves_every_teacher_checkpoint_of_a_run(fake_vllm, small_gpu, tiny_model_dir, tmp_path):
    """A round's updated teacher, and each evaluation teacher, is loaded into the run's sleeping engine
    (TRL's colocate weight sync) instead of a new engine per checkpoint: one engine's memory on the GPU,
    and what it draws is what a fresh engine on that checkpoint draws."""
    from seal.teacher.vllm_sampling import VLLMTeacher

    tok, domain, insts = small_gpu
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    updated = tmp_path / "round1"
    model.save_pretrained(updated)
    tok.save_pretrained(updated)
    cfg = SamplingConfig(k=2, max_new_tokens=10, temperature=1.0)  # seeded per request

    def draw(path):
        teacher = VLLMTeacher(str(path), tok, cfg, domain, chat=True, instances=insts)
        texts = [s.texts for s in teacher.sample(insts)]
        teacher.release()
        return teacher, texts

    base_teacher, base_texts = draw(tiny_model_dir)
    free = fake_vllm.DEVICE["free"]
    round1, round1_texts = draw(updated)
    again, again_texts = draw(tiny_model_dir)  # the base teacher once more, as the evaluation does
    assert round1.llm is base_teacher.llm is again.llm and [c for c in fake_vllm.CALLS if "init" in c][1:] == []
    assert fake_vllm.DEVICE["free"] == free  # asleep between teachers; no second engine's share taken
    assert [c["load_weights"] for c in fake_vllm.CALLS if "load_weights" in c] == [len(list(model.parameters()))] * 2
    assert round1.llm.prefix_cache_resets == 2  # cached prefixes of the old weights are not reused
    assert again_texts == base_texts and round1_texts != base_texts
    from seal.shared import vllm_engine

    vllm_engine.dispose(vllm_engine._ENGINES.pop())  # one sleep-mode engine per process: the old one goes
    assert round1.llm is None and base_teacher.llm is None
    fresh, fresh_texts = draw(updated)
    assert len([c for c in fake_vllm.CALLS if "init" in c]) == 2 and fresh_texts == round1_texts


def test_a_pinned_teacher_revision_reaches_the_engine_and_its_weight_reloads(fake_vllm, small_gpu, tiny_model_dir,
                                                                           monkeypatch):
    """teacher.revision pins the hub revision: a new engine is built at it, and a checkpoint loaded into
    the run's sleeping engine is read from the snapshot at it (config and weights), not the default
    branch's."""
    import huggingface_hub

    from seal.shared import vllm_engine
    from seal.teacher.vllm_sampling import VLLMTeacher

    tok, domain, insts = small_gpu
    seen = []
    local = vllm_engine.model_config(str(tiny_model_dir))

    def config(path, revision=None):  # no hub here: the tiny model stands for org/tiny at v2
        seen.append(("config", path, revision))
        return local

    def snapshot(repo_id, revision=None, **_):
        seen.append(("weights", repo_id, revision))
        return str(tiny_model_dir)
    monkeypatch.setattr(vllm_engine, "model_config", config)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    cfg = SamplingConfig(k=1, max_new_tokens=4)
    first = VLLMTeacher(str(tiny_model_dir), tok, cfg, domain, chat=True, instances=insts, revision="v2")
    assert [c["engine_args"].get("revision") for c in fake_vllm.CALLS if "init" in c] == ["v2"]
    drawn = first.sample(insts)
    first.release()
    hub = VLLMTeacher("org/tiny", tok, cfg, domain, chat=True, instances=insts, revision="v2")
    assert hub.llm is first.llm  # the revision does not split engines: the checkpoint is loaded into it
    assert ("config", "org/tiny", "v2") in seen and ("weights", "org/tiny", "v2") in seen
    assert [s.texts for s in hub.sample(insts)] == [s.texts for s in drawn]


def test_a_teacher_engine_is_shared_only_when_idle_and_long_enough(fake_vllm, small_gpu, tiny_model_dir):
    """vLLM allows one sleep-mode engine per process: a teacher while another still samples is a clear
    error; a teacher whose prompts need a longer context than the idle engine holds gets a new engine long
    enough for both (the old one deleted first, its memory back), which then serves the shorter ones."""
    from seal.shared import vllm_engine
    from seal.teacher.vllm_sampling import VLLMTeacher

    tok, domain, insts = small_gpu
    fake_vllm.DEVICE = {k: 4 * v for k, v in fake_vllm.DEVICE.items()}

    def teacher(new_tokens):
        sampling = SamplingConfig(k=1, max_new_tokens=new_tokens, vllm={"gpu_memory_utilization": 0.2})
        return VLLMTeacher(str(tiny_model_dir), tok, sampling, domain, chat=True, instances=insts)

    short = teacher(5)
    with pytest.raises(RuntimeError, match="one sleep-mode engine per process"):
        teacher(5)  # short has not been released
    short.release()
    free = fake_vllm.DEVICE["free"]
    length = short.engine.max_model_len
    longer = teacher(10)  # more context than the idle engine holds
    assert short.llm is None and longer.engine.max_model_len == length + 5
    assert [e.llm for e in vllm_engine._ENGINES] == [longer.llm]
    assert fake_vllm.DEVICE["free"] == free + fake_vllm.CONTEXT - longer.llm.reserved  # the old one's memory back
    longer.release()
    again = teacher(5)
    assert again.llm is longer.llm and again.sample(insts)


def test_a_gpu_engine_runs_in_process_so_its_weights_can_be_reloaded(fake_vllm, small_gpu, tiny_model_dir):
    """vLLM's V1 engine core runs in another process unless the external_launcher backend (or
    VLLM_ENABLE_V1_MULTIPROCESSING=0) keeps it in this one, and only then is its model reachable for a
    weight reload: a single-process run gets the backend and the rendezvous variables it needs, as in TRL."""
    import gc
    import os

    from seal.shared.vllm_engine import engine_args

    llm = fake_vllm.LLM(str(tiny_model_dir), enable_sleep_mode=True, gpu_memory_utilization=0.4, max_model_len=64)
    with pytest.raises(AttributeError):  # the multiprocess engine core: the model is in another process
        assert llm.llm_engine.model_executor is None
    del llm  # vLLM allows one sleep-mode engine per process (deleted awake: its memory comes back)
    gc.collect()
    args = engine_args({}, max_model_len=64)
    assert args["distributed_executor_backend"] == "external_launcher" and os.environ["WORLD_SIZE"] == "1"
    llm = fake_vllm.LLM(str(tiny_model_dir), **args)
    assert llm.llm_engine.model_executor.driver_worker.model_runner.model


def test_a_level_two_sleep_needs_new_weights_before_the_engine_generates(fake_vllm, tiny_model_dir, monkeypatch):
    """As the real engine after sleep(level=2) computes with uninitialised memory, the fake refuses to
    generate until weights are loaded: a plain wake_up() is not a reload."""
    from seal.shared.vllm_engine import checkpoint_weights

    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    llm = fake_vllm.LLM(str(tiny_model_dir), enable_sleep_mode=True, distributed_executor_backend="external_launcher")
    llm.sleep(level=2)
    llm.wake_up()
    with pytest.raises(RuntimeError, match="uninitialised"):
        llm.generate("hi", fake_vllm.SamplingParams(max_tokens=2))
    model = llm.llm_engine.model_executor.driver_worker.model_runner.model
    with pytest.raises(ValueError, match="no module or parameter"):
        model.load_weights([("model.no_such_layer.weight", torch.zeros(1))])
    weights = list(checkpoint_weights(str(tiny_model_dir)))
    model.load_weights(weights[:1])
    with pytest.raises(RuntimeError, match="uninitialised"):  # one tensor is not the model
        llm.generate("hi", fake_vllm.SamplingParams(max_tokens=2))
    model.load_weights(weights[1:])
    assert llm.generate("hi", fake_vllm.SamplingParams(max_tokens=2))


@pytest.mark.parametrize("algorithm", ["rest_em", "grpo"])
def test_each_mode_self_round_deletes_its_scoring_engine_before_the_next_builds_one(fake_vllm, small_gpu,
                                                                                   tiny_model_dir, tmp_path, algorithm,
                                                                                   monkeypatch):
    """In mode self each round's student is the updated teacher with a scoring engine of its own, and vLLM
    allows one sleep-mode engine per process (an engine left asleep, or merely not yet collected, fails
    the next one's start): a round ends by deleting its engine, under either outer algorithm."""
    from seal.shared import RunStore
    from seal.teacher import run_grpo
    from seal.teacher.rest_em import run_rounds

    tok, domain, insts = small_gpu
    # the simulated GPU's engine sets torch.distributed's variables, so accelerate takes this CPU process for
    # a MULTI_CPU launch and warns when OMP_NUM_THREADS is unset
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = parse_config(["--teacher.name", str(tiny_model_dir), "--inner.score_backend", "vllm",
                        "--inner.vllm", "{max_model_len: 200}", "--outer.rounds", "2", "--data.per_round", "1",
                        "--sampling.k", "2", "--sampling.max_new_tokens", "8", "--inner.epochs", "1",
                        "--inner.seeds", "[0]", "--inner.lora_r", "8", "--outer.lr", "1e-3",
                        "--outer.algorithm", algorithm, "--threads", "1"]
                       + (["--outer.grpo_steps", "1"] if algorithm == "grpo" else []))
    rounds = (run_rounds if algorithm == "rest_em" else run_grpo)(cfg, domain, RunStore(tmp_path, {}), insts)
    assert [r.round for r in rounds] == [0, 1]
    assert len([c for c in fake_vllm.CALLS if "init" in c]) == 2  # one scoring engine per round


def test_a_rank_with_nothing_to_sample_still_builds_the_engine_the_others_build(fake_vllm, small_gpu,
                                                                               tiny_model_dir, tmp_path):
    """vLLM's external_launcher engine start is collective across ranks: under 2 processes, rank 1 of a
    single held-out instance has nothing to sample, yet builds its engine with rank 0, sized on the
    instances of all ranks (not its own share), and samples nothing."""
    from seal.shared import RunStore
    from seal.shared.dist import Dist
    from seal.shared.models import vllm_prompt
    from seal.shared.records import SelfEditRecord
    from seal.teacher.evaluation import _sample_condition

    tok, domain, insts = small_gpu
    cfg = parse_config(["--teacher.name", str(tiny_model_dir), "--sampling.backend", "vllm",
                        "--sampling.max_new_tokens", "10"])
    store = RunStore(tmp_path, {})
    longest = max(insts, key=lambda i: len(domain.teacher_prompt(i)))
    _sample_condition(cfg, domain, store, [longest], "base_teacher", cfg.teacher, set(), Dist(rank=1, world=2), "k")
    (init,) = [c for c in fake_vllm.CALLS if "init" in c]
    assert init["max_model_len"] == len(vllm_prompt(tok, domain.teacher_prompt(longest), True)["prompt_token_ids"]) + 10
    assert not list(store.iter("eval_self_edits", SelfEditRecord))


def test_the_fixed_students_scoring_engine_is_deleted_before_the_evaluation_loads_its_own(fake_vllm, small_gpu,
                                                                                          tiny_model_dir, tmp_path):
    """teacher_student mode keeps one student through the rounds; the evaluation that follows in the same
    process loads its own, with its own scoring engine: the rounds' one must be gone by then."""
    from seal.shared import RunStore
    from seal.student import load_student
    from seal.teacher.rest_em import run_rounds

    tok, domain, insts = small_gpu
    cfg = parse_config(["--mode", "teacher_student", "--teacher.name", str(tiny_model_dir), "--student.name",
                        str(tiny_model_dir), "--inner.score_backend", "vllm", "--inner.vllm", "{max_model_len: 200}",
                        "--data.per_round", "1", "--sampling.k", "2", "--sampling.max_new_tokens", "8",
                        "--inner.epochs", "1", "--inner.seeds", "[0]", "--inner.lora_r", "8"])
    run_rounds(cfg, domain, RunStore(tmp_path, {}), insts)
    assert load_student(cfg.inner, cfg.student, domain).scorer.llm is not None


def test_a_misspelt_engine_argument_is_refused_at_start_up(fake_vllm, tiny_model_dir):
    """vllm.LLM passes its keyword arguments to EngineArgs, a dataclass: an unknown name is a TypeError, which
    came only once the run's models had loaded. Where vLLM is installed it is refused at start-up."""
    from seal.run import preflight
    from seal.shared.config import ConfigError
    from seal.shared.dist import Dist

    with pytest.raises(TypeError):
        fake_vllm.LLM(str(tiny_model_dir), gpu_memory_utilisation=0.5)  # what the engine itself does
    cfg = parse_config(["--sampling.backend", "vllm", "--sampling.vllm", "{gpu_memory_utilisation: 0.5}"])
    with pytest.raises(ConfigError, match=r"vllm.gpu_memory_utilisation: .*did you mean gpu_memory_utilization"):
        preflight(cfg, KnowledgeDomain(), Dist())
    cfg = parse_config(["--inner.score_backend", "vllm", "--inner.vllm", "{max_num_seq: 8}"])
    with pytest.raises(ConfigError, match="inner.vllm.max_num_seq"):
        preflight(cfg, KnowledgeDomain(), Dist())
    preflight(parse_config(["--sampling.backend", "vllm", "--sampling.vllm", "{max_num_seqs: 8}"]), KnowledgeDomain(),
              Dist())
