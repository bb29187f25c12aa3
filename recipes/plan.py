"""Device memory per phase of a run, before the run: does it fit, and with how many adapters at once?

    python recipes/plan.py --config recipes/knowledge/qwen2.5-7b.yaml [--gpu_memory_gb 80]
        [--num_processes 8] [--zero3] [--prompt_tokens N] [--section.key VALUE ...]

The models are built on the `meta` device from their configs (no weights are read: a hub name needs
only its config.json), and every phase's bytes per GPU are estimated from the run's settings with the
terms of `seal.shared.memory`: sampling, the inner loop at K adapters, scoring, CPT, the teacher's SFT
(or GRPO step). It prints the table, the K it would use and vLLM engine sizes, and refuses (exit 2) a
plan that cannot fit, naming the phase and the key to change. Worst cases are assumed where the data
decides (rows of batch_size × max_length tokens). The terms are estimates not yet calibrated on a GPU.
"""

from __future__ import annotations

import _no_shadow  # noqa: F401  (first: see its docstring)

# isort: split

import argparse
import sys
from dataclasses import dataclass

from seal.shared.config import ConfigError, SealConfig
from seal.shared.config_parser import parse_config
from seal.shared.memory import GB, ModelShape, bank_bytes, inner_loop_bytes, row_tokens, shape_of
from seal.shared.models import resolve

HEADROOM = 0.9  # of each GPU: the CUDA context, allocator fragmentation and NCCL buffers take the rest
ENGINE_OVERHEAD = 2 * GB  # a vLLM engine's CUDA graphs and sampler buffers beyond weights and KV cache


@dataclass
class Phase:
    name: str
    resident: int
    """Model weights held through the phase, per GPU."""
    working: int
    """What the phase itself allocates, per GPU."""
    key: str
    """The setting to change when it does not fit."""

    @property
    def total(self) -> int:
        return self.resident + self.working


def load_shape(name: str, revision: str | None = None) -> ModelShape:
    from transformers import AutoConfig

    return shape_of(AutoConfig.from_pretrained(resolve(name), revision=revision))


def phases(cfg: SealConfig, teacher: ModelShape, student: ModelShape, slots: int, world: int, zero3: bool,
           prompt_tokens: int) -> list[Phase]:
    """Every phase the run goes through, at `slots` adapters trained and scored at once."""
    inner, outer, sampling = cfg.inner, cfg.outer, cfg.sampling
    t_dtype = cfg.teacher.dtype
    s_dtype = (cfg.student or cfg.teacher).dtype
    self_mode = cfg.mode == "self"
    student_weights = student.weight_bytes(s_dtype) // (world if inner.deepspeed else 1)
    generated = sampling.k * (prompt_tokens + sampling.max_new_tokens)
    out = []
    resident = student_weights  # after sampling: a transformers teacher beside the student is released
    if sampling.backend == "vllm":  # the engine keeps its share of the GPU through the round
        engine = teacher.weight_bytes(t_dtype) + teacher.kv_bytes(generated, t_dtype) + ENGINE_OVERHEAD
        out.append(Phase("sampling (vLLM engine)", resident, engine, "sampling.vllm.gpu_memory_utilization"))
        resident += engine
    elif sampling.backend == "hf":
        out.append(Phase("sampling", resident + (0 if self_mode else teacher.weight_bytes(t_dtype)),
                         teacher.kv_bytes(generated, t_dtype), "sampling.max_new_tokens"))
    shard = world if zero3 else 1
    lora = teacher.lora_params(outer.lora_r, outer.target_modules) if outer.lora else teacher.params
    optimizer = lora * 16 // shard  # fp32 weights, gradient and two AdamW moments
    grpo = bool(outer.rounds) and outer.algorithm == "grpo"
    evaluation = resident  # the held-out evaluation (CPT) runs after the rounds, their teacher gone
    if grpo:  # the inner loops run inside the reward calls of the teacher's GRPO step: it stays resident
        resident += teacher.weight_bytes(t_dtype) // shard + optimizer
    row = row_tokens(inner.batch_size, inner.max_length, inner.max_row_tokens)
    checkpointing = inner.gradient_checkpointing
    out.append(Phase(f"inner loop ({slots} adapters)", resident,
                     inner_loop_bytes(student, slots, row, inner.lora_r, inner.target_modules, s_dtype, checkpointing,
                                      inner.train_on_padding),
                     "inner.max_row_tokens or inner.gradient_checkpointing"))
    domain = cfg.domain
    if domain.get("name", "knowledge") == "arc":  # every test input under its views, answers up to 30×31
        queries, query_tokens = 20, prompt_tokens + 930
    else:  # SQuAD passages have about five questions; a question prompt is short
        queries, query_tokens = 5, 96 + int(domain.get("answer_max_new_tokens", 64))
    scoring = bank_bytes(student, slots, inner.lora_r, inner.target_modules, training=False)
    if inner.score_backend == "vllm":
        scoring += student.weight_bytes(s_dtype) + ENGINE_OVERHEAD
    scored = min(slots * queries * query_tokens, inner.score_batch_tokens)  # CPT's one adapter: as many
    out.append(Phase(f"scoring ({slots} adapters)", resident,
                     scoring + student.kv_bytes(scored, s_dtype), "inner.score_batch_tokens"))
    if cfg.eval.enabled and cfg.eval.cpt:
        cpt_row = row_tokens(cfg.eval.cpt_batch_size or inner.batch_size, inner.max_length, inner.max_row_tokens)
        cpt = (bank_bytes(student, slots, inner.lora_r, inner.target_modules, training=True)
               + inner_loop_bytes(student, 1, cpt_row, inner.lora_r, inner.target_modules, s_dtype, checkpointing,
                                  inner.train_on_padding)
               - bank_bytes(student, 1, inner.lora_r, inner.target_modules, training=True))
        out.append(Phase("CPT (one adapter, all held-out instances)", evaluation, cpt, "inner.max_row_tokens"))
    if outer.rounds:
        # the teacher is loaded whole on every rank before a ZeRO-3 trainer partitions it; the student stays
        # (teacher_student: the fixed one; GRPO in mode self: a frozen copy of the round's teacher)
        whole = teacher.weight_bytes(t_dtype) - teacher.weight_bytes(t_dtype) // shard
        if grpo:  # a step: prompts_per_step prompts × k completions
            tokens = sampling.k * outer.grpo_prompts_per_step * (prompt_tokens + sampling.max_new_tokens)
            working = (optimizer + teacher.kv_bytes(tokens, t_dtype)
                       + teacher.checkpointed_activation_bytes(tokens, t_dtype) + teacher.logits_bytes(tokens, t_dtype))
            out.append(Phase("GRPO step", teacher.weight_bytes(t_dtype) // shard + student_weights,
                             max(working, whole), "sampling.k, outer.grpo_prompts_per_step or sampling.max_new_tokens"))
        else:
            tokens = outer.batch_size * outer.max_length
            working = (optimizer + teacher.checkpointed_activation_bytes(tokens, t_dtype)
                       + teacher.logits_bytes(tokens, t_dtype))
            out.append(Phase("teacher SFT", teacher.weight_bytes(t_dtype) // shard
                             + (0 if self_mode else student_weights), max(working, whole),
                             "outer.max_length or outer.batch_size"))
    return out


def plan(cfg: SealConfig, gpu_bytes: int, world: int, zero3: bool, prompt_tokens: int,
         shapes: tuple[ModelShape, ModelShape] | None = None) -> tuple[int, list[Phase]]:
    """(K, phases at K): K is inner.parallel_adapters, or the most adapters (at most 16) whose phases fit.
    Raises ConfigError naming the phase and the key when nothing fits."""
    teacher, student = shapes or (load_shape(cfg.teacher.name, cfg.teacher.revision),
                                  load_shape((cfg.student or cfg.teacher).name, (cfg.student or cfg.teacher).revision))
    limit = HEADROOM * gpu_bytes
    candidates = [cfg.inner.parallel_adapters] if cfg.inner.parallel_adapters else range(16, 0, -1)
    for slots in candidates:
        at = phases(cfg, teacher, student, slots, world, zero3, prompt_tokens)
        over = [p for p in at if p.total > limit]
        if not over:
            return slots, at
    worst = max(over, key=lambda p: p.total)
    raise ConfigError(f"{worst.name} needs {worst.total / GB:.1f} GiB per GPU, more than {limit / GB:.1f} GiB "
                      f"({HEADROOM:.0%} of {gpu_bytes / GB:.0f} GiB): change {worst.key}"
                      + ("" if cfg.inner.deepspeed or cfg.mode == "self" else ", or set inner.deepspeed"))


def table(slots: int, at: list[Phase], gpu_bytes: int) -> str:
    lines = ["| phase | weights GiB | working GiB | total GiB / GPU |", "|---|---:|---:|---:|"]
    lines += [f"| {p.name} | {p.resident / GB:.1f} | {p.working / GB:.1f} | {p.total / GB:.1f} |" for p in at]
    peak = max(p.total for p in at)
    lines.append(f"\nPeak {peak / GB:.1f} GiB of {gpu_bytes / GB:.0f} GiB per GPU; "
                 f"inner.parallel_adapters (K): {slots}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("--gpu_memory_gb", type=float, default=80.0,
                        help="GiB per GPU (an 80 GB H100 reports 79.6 GiB); every figure printed is in GiB")
    parser.add_argument("--num_processes", type=int, default=1, help="GPUs of the launch (ZeRO-3 shards over them)")
    parser.add_argument("--zero3", action="store_true", help="the teacher SFT runs under the ZeRO-3 accelerate config")
    parser.add_argument("--prompt_tokens", type=int, default=None,
                        help="longest teacher prompt (default: 512 for knowledge, 4096 for ARC)")
    if {"-h", "--help"} & set(argv):  # plan's own flags, then the config's (parse_config prints and exits)
        parser.print_help()
        print("\nThe config and its overrides, as recipes/seal.py takes them:\n")
    ours, rest = parser.parse_known_args(argv)
    try:
        cfg = parse_config(rest)
        prompt = ours.prompt_tokens or (4096 if cfg.domain.get("name") == "arc" else 512)
        gpu = int(ours.gpu_memory_gb * GB)
        zero3 = ours.zero3 or cfg.inner.deepspeed
        slots, at = plan(cfg, gpu, ours.num_processes, zero3, prompt)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(slots, at, gpu))
    if cfg.sampling.backend == "vllm":
        engine = next(p for p in at if p.name.startswith("sampling"))
        print(f"vLLM sampling engine: max_model_len {prompt + cfg.sampling.max_new_tokens}, "
              f"gpu_memory_utilization {min(0.95, (engine.working + GB) / gpu):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
