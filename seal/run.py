"""What every recipe does before and after its work: read the config, open the run directory, and turn
expected failures into one `error: ...` line with exit status 2.

    with start(argv) as run:        # parse + check the config, domain, processes, run store, tracking
        ...                         # run.cfg, run.domain, run.dist, run.store, run.tracker

Everything that can be checked without a model is checked here, before any model loads: the config
(unknown keys, types, choices, `outer.trl_args` against TRL's config), the domain's options, the data
split, the run directory's config. Ctrl-C and SIGTERM stop the run with one line saying that the same
command resumes it (finished work is in the run store).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from seal.shared.config import ConfigError, SealConfig
from seal.shared.config_parser import parse_config, redacted_argv, to_dict
from seal.shared.dist import Dist, init_dist
from seal.shared.domain import DataError, Domain, make_domain
from seal.shared.judge import JudgeError
from seal.shared.models import ModelLoadError
from seal.shared.store import RunDirError, RunStore
from seal.shared.tracking import Tracker
from seal.teacher.served import ServedTeacherError

log = logging.getLogger("seal")

EXPECTED = (ConfigError, DataError, RunDirError, ModelLoadError, JudgeError, ServedTeacherError, FileNotFoundError)
"""Failures a user can act on from the message alone: printed as one line, exit status 2. (Other
exceptions are bugs and keep their traceback.)"""


class Stopped(BaseException):
    """SIGTERM: the run stops where it is; the run store keeps what finished. A BaseException, as
    KeyboardInterrupt: no `except Exception` on the way (e.g. a data loader's error message) may take it
    for a failure of its own."""


@dataclass
class Run:
    cfg: SealConfig
    domain: Domain
    dist: Dist
    store: RunStore
    tracker: Tracker
    exit_code: int = 0


def quiet_libraries(offline: bool) -> None:
    """Third-party noise a user cannot act on: hub telemetry when offline, transformers' logger at error
    level (its warnings are per-call notices about generation and loading defaults that SEAL sets on
    purpose) and its progress bars, and one deprecation that TRL itself triggers (by its exact message).
    Python warnings from everything else stay visible."""
    if offline:
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its fork warning: we never fork tokenizers
    import torch
    import transformers

    if not torch.cuda.is_available():  # DeepSpeed (imported by TRL and accelerate) warns while guessing otherwise
        os.environ.setdefault("DS_ACCELERATOR", "cpu")

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # TRL (trl/models/utils.py) reads transformers' deprecated `is_gradient_checkpointing` alias itself
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@contextlib.contextmanager
def start(argv: list[str], what: str = "run", config_cls: type = SealConfig, subdir: str = "") -> Iterator[Run]:
    """The recipe's body runs inside; expected errors and stops end it with a message and `run.exit_code`.
    `config_cls`: the recipe's config (a SealConfig subclass); `subdir`: the run store lives in
    `output_dir/subdir` (a recipe with its own results beside a seal.py run of the same config)."""
    from seal.teacher.trl_args import check_trl_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run: Run | None = None
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        quiet_libraries(offline=os.environ.get("HF_HUB_OFFLINE") == "1")  # imports torch: seconds, signals may come
        try:
            cfg = parse_config(argv, config_cls)
        except ValueError as err:  # a config or YAML value the parser could not use
            raise ConfigError(str(err)) from err
        check_trl_args(cfg)
        try:
            domain = make_domain(cfg.domain)
        except ValueError as err:  # a domain option the domain itself refused
            raise ConfigError(str(err)) from err
        dist = init_dist(cpu=cfg.teacher.device == "cpu", timeout_minutes=cfg.dist_timeout_minutes)
        preflight(cfg, domain, dist, updates_teacher=what == "run")
        logging.getLogger().setLevel(cfg.log_level.upper() if dist.is_main else "WARNING")
        if cfg.teacher.name == "embedded" and (cfg.student is None or cfg.student.name == "embedded"):
            os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # nothing of this run comes from the hub
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        store = RunStore(os.path.join(cfg.output_dir, subdir), to_dict(cfg), rank=dist.rank)
        if cfg.report_to == "wandb" and list(argv) == sys.argv[1:]:
            # wandb records the program's arguments (wandb_settings.py `_args`, read from sys.argv whenever
            # needed, the job artifact at finish included): they were parsed already, so this process keeps
            # them with their secrets masked (a URL's credentials, `--x.api_key V`)
            sys.argv[1:] = redacted_argv(list(argv))
        tracker = Tracker(cfg.report_to == "wandb", store.path, to_dict(cfg), cfg.wandb, dist.is_main)
        run = Run(cfg, domain, dist, store, tracker)
        yield run
    except EXPECTED as err:
        print(f"error: {err}", file=sys.stderr)
        _set_exit(run, 2)
    except (KeyboardInterrupt, Stopped):
        where = f" in {run.store.path}" if run is not None else ""
        print(f"\nstopped: finished work is kept{where}; run the same command to resume the {what}.",
              file=sys.stderr)
        _set_exit(run, 130)
    except BaseException:  # a bug: it keeps its traceback, and the tracked run is marked failed
        if run is not None:
            run.exit_code = run.exit_code or 1
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if run is not None:
            run.tracker.finish(run.exit_code)


def load_split(run: Run, which: str) -> list[Any]:
    """The `train` or `eval` instances of the run's data source: the split's slice, then (training only)
    the held-out set's articles dropped under `data.disjoint_articles` and `data.offset`, then
    `data.train_limit` / `data.eval_limit`."""
    data = run.cfg.data
    if which == "train":
        instances = run.domain.load(data.source, data.train_split)
        if data.disjoint_articles:
            heldout = {run.domain.article(i) for i in load_split(run, "eval")}
            if None in heldout:
                raise ConfigError(f"data.disjoint_articles: the {run.cfg.domain['name']} domain does not say which "
                                  "article an instance comes from")
            instances = [i for i in instances if run.domain.article(i) not in heldout]
        instances = instances[data.offset:]
        limit = data.train_limit
    else:
        instances = run.domain.load(data.source, data.eval_split)
        if data.eval_shuffle_seed is not None:  # as the official code: random.seed(s); random.shuffle(...)
            random.Random(data.eval_shuffle_seed).shuffle(instances)
        limit = data.eval_limit
    instances = instances[:limit] if limit is not None else instances
    if not instances:
        dropped = " and data.disjoint_articles" if which == "train" and data.disjoint_articles else ""
        raise DataError(f"no {which} instances of {data.source} are left (after data.offset {data.offset}{dropped})")
    needed = (data.per_round or 0) * run.cfg.outer.rounds
    if which == "train" and needed > len(instances):
        raise DataError(f"data.per_round {data.per_round} × outer.rounds {run.cfg.outer.rounds} needs {needed} "
                        f"training instances; {data.source} {data.train_split} has {len(instances)}")
    return instances


def preflight(cfg: SealConfig, domain: Domain, dist: Dist, updates_teacher: bool = True) -> None:
    """What the run will need from outside, checked before any model loads, once (on the main process; every
    rank stops with its message): the domain's own needs (the knowledge judge), a served teacher and vLLM's
    engine argument names; and, for a run that updates its teacher (`updates_teacher`: recipes/seal.py),
    that the launch's mixed precision suits the teacher's dtype (`trl_args.precision`: a clash fails
    here, not after a round)."""
    from seal.shared.vllm_engine import check_engine_args
    from seal.teacher.trl_args import precision

    if updates_teacher and cfg.outer.rounds > 0:
        precision(cfg.teacher.dtype, on_cpu=False)
    if cfg.sampling.backend == "vllm":
        check_engine_args("sampling.vllm", cfg.sampling.vllm)
    if cfg.inner.score_backend == "vllm":
        check_engine_args("inner.vllm", cfg.inner.vllm)
    split = cfg.eval.cpt_split
    if cfg.eval.cpt and split is not None and split not in domain.cpt_splits:  # recipes/evaluate.py: enabled or not
        raise ConfigError(f"eval.cpt_split {split!r}: the {domain.name} domain's CPT splits are "
                          f"{', '.join(domain.cpt_splits) or 'none'} (null: as its single-instance plans)")
    message = None
    if dist.is_main:
        try:
            domain.preflight()
            if cfg.sampling.backend == "openai" or (cfg.eval.enabled and "served" in cfg.eval.conditions):
                from seal.teacher.served import ServedTeacher

                ServedTeacher(cfg.sampling, domain).check()
        except EXPECTED as err:
            message = str(err)
    message = dist.share(message)
    if message is not None:
        raise ConfigError(message)


def _set_exit(run: Run | None, code: int) -> None:
    if run is None:
        raise SystemExit(code)
    run.exit_code = code


def _stop(signum: int, frame: Any) -> None:
    raise Stopped()
