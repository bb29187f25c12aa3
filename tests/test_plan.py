"""recipes/plan.py and the memory model under it: the GPU recipes' models built on the meta device from
their published configs (tests/fixtures/configs), every phase of the three GPU recipes within 80 GiB."""

import pytest

from seal.shared.config_parser import parse_config
from seal.shared.memory import GB, inner_loop_bytes, shape_of
from tests.conftest import REPO, import_recipe

CONFIGS = REPO / "tests" / "fixtures" / "configs"
RECIPES = {  # recipe: (model overrides, launch flags, K the plan uses)
    "knowledge/qwen2.5-7b.yaml": (["--teacher.name", str(CONFIGS / "qwen2.5-7b")], [], 3),
    "knowledge/qwen2.5-7b-teaches-72b.yaml": (["--teacher.name", str(CONFIGS / "qwen2.5-7b"), "--student.name",
                                               str(CONFIGS / "qwen2.5-72b-instruct")], ["--num_processes", "8"], 3),
    "arc/llama-3.2-1b.yaml": (["--teacher.name", str(CONFIGS / "llama-3.2-1b-instruct")], [], 1),
}


@pytest.mark.parametrize("name, published", [("qwen2.5-7b", 7.62e9), ("qwen2.5-72b-instruct", 72.7e9),
                                             ("llama-3.2-1b-instruct", 1.24e9)])
def test_the_meta_device_models_have_the_published_sizes(name, published):
    from transformers import AutoConfig

    shape = shape_of(AutoConfig.from_pretrained(CONFIGS / name))
    assert shape.params == pytest.approx(published, rel=0.005)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_phase_of_the_gpu_recipes_fits_80_gb(recipe, capsys):
    plan = import_recipe("plan")
    models, launch, slots = RECIPES[recipe]
    assert plan.main(["--config", str(REPO / "recipes" / recipe), *models, *launch]) == 0
    out = capsys.readouterr().out
    assert f"inner.parallel_adapters (K): {slots}" in out
    cfg = parse_config(["--config", str(REPO / "recipes" / recipe), *models])
    k, phases = plan.plan(cfg, 80 * GB, 8 if launch else 1, cfg.inner.deepspeed, 4096 if "arc" in recipe else 512)
    assert k == slots and all(p.total <= 0.9 * 80 * GB for p in phases)
    assert {"sampling", "teacher SFT"} <= {p.name for p in phases} and any(p.name.startswith("inner loop")
                                                                          for p in phases)


def test_a_plan_that_cannot_fit_names_the_phase_and_the_key(capsys):
    """The 72B recipe without gradient checkpointing: its student's activations alone (27 MB per token)
    overflow 80 GiB at one adapter."""
    plan = import_recipe("plan")
    models, launch, _ = RECIPES["knowledge/qwen2.5-7b-teaches-72b.yaml"]
    code = plan.main(["--config", str(REPO / "recipes/knowledge/qwen2.5-7b-teaches-72b.yaml"), *models, *launch,
                      "--inner.gradient_checkpointing", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "error: inner loop (1 adapters) needs" in err and "inner.gradient_checkpointing" in err


def test_auto_slots_sizes_k_by_the_real_row_length_and_the_bank(tiny_model_dir, monkeypatch):
    """ARC rows reach batch 2 × 8192 tokens; the old estimate assumed 256-token rows whatever the config."""
    import psutil

    from seal.shared.config import InnerConfig
    from seal.shared.memory import shape_of_model
    from seal.shared.models import ModelConfig, load_model
    from seal.student.inner_loop import auto_slots

    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    short, long = InnerConfig(lora_r=8, max_length=256, batch_size=1), InnerConfig(lora_r=8, max_length=512,
                                                                                  batch_size=4)
    shape = shape_of_model(model)
    free = int(inner_loop_bytes(shape, 6, 256, 8, short.target_modules, "float32") / 0.9) + 1
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": free})())
    assert auto_slots(model, short) == 6  # exactly what 90 % of the free memory holds
    assert auto_slots(model, long) < 6  # 2048-token rows: fewer adapters at once
    assert auto_slots(model, InnerConfig(lora_r=8, max_length=512, batch_size=4, max_row_tokens=256)) < 6 \
        <= auto_slots(model, InnerConfig(lora_r=8, max_length=256, batch_size=4, max_row_tokens=256))


def test_grpo_and_teacher_updates_count_what_stays_beside_them(capsys):
    """The GRPO step ignored its prompts per step and the student beside it, the inner loop under GRPO
    ignored the teacher resident through its reward calls, and the teacher SFT of teacher_student ignored
    the fixed student and the teacher's whole copy before ZeRO-3 partitions it."""
    plan = import_recipe("plan")
    shapes = (plan.load_shape(str(CONFIGS / "qwen2.5-7b")),) * 2
    common = ["--teacher.dtype", "bfloat16", "--outer.rounds", "1", "--sampling.k", "5", "--sampling.max_new_tokens",
              "1024", "--inner.max_length", "2048", "--inner.parallel_adapters", "2", "--eval.enabled", "false"]

    def phases(*args, world=1, zero3=False):
        cfg = parse_config([*common, *args])
        return {p.name.split(" (")[0]: p for p in plan.phases(cfg, *shapes, 2, world, zero3, 512)}

    rest, grpo = phases(), phases("--outer.algorithm", "grpo", "--outer.grpo_prompts_per_step", "1")
    four = phases("--outer.algorithm", "grpo", "--outer.grpo_prompts_per_step", "4")
    assert four["GRPO step"].total > grpo["GRPO step"].total  # four prompts' completions per step
    weights = shapes[0].weight_bytes("bfloat16")
    assert grpo["GRPO step"].resident >= 2 * weights  # the teacher and the frozen student copy
    assert grpo["inner loop"].resident > rest["inner loop"].resident + weights  # the teacher stays resident
    cpt = phases("--outer.algorithm", "grpo", "--eval.enabled", "true", "--eval.cpt", "true")["CPT"]
    assert cpt.resident == rest["inner loop"].resident  # the evaluation runs after the rounds' teacher is gone
    ts = ["--mode", "teacher_student", "--student.name", "x", "--student.dtype", "bfloat16"]
    sft = phases(*ts, world=8, zero3=True)["teacher SFT"]
    assert sft.resident >= weights + weights // 8 and sft.total >= 2 * weights - weights // 8


def test_the_dense_mask_of_training_on_padding_counts_in_the_models_dtype():
    """inner.train_on_padding attends through an additive mask in the model's dtype (student/inner_loop.py),
    not transformers' one-byte boolean one: a pass of T tokens holds T² mask elements of that size."""
    from seal.shared.memory import ModelShape

    shape = ModelShape(params=10**6, layers=2, hidden=64, intermediate=128, kv_dim=64, vocab=100,
                       linears=[("q_proj", 64, 64)])
    plain = inner_loop_bytes(shape, 2, 100, 8, ["q_proj"], "float32")
    dense = inner_loop_bytes(shape, 2, 100, 8, ["q_proj"], "float32", dense_mask=True)
    assert dense - plain == 200 * 200 * (4 - 1)
