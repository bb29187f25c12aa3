"""Experiment tracking: one wandb run per SEAL run, written by the main process only.

`report_to: wandb` turns it on. Without credentials (`WANDB_API_KEY`, or `wandb login`'s entry in
~/.netrc), outside a sweep and with no `WANDB_MODE` of the user's, the run is offline, so nothing needs
the network; `wandb sync` uploads it later. The config is logged with
secrets redacted. The run id is derived from the run directory, so a resumed SEAL run continues the
same wandb run, and TRL's trainer (teacher SFT) logs into it instead of opening another.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from seal.shared.config import WandbConfig
from seal.shared.config_parser import redacted
from seal.shared.records import RewardRecord, RoundRecord, SelfEditRecord, edit_rewards

log = logging.getLogger("seal")


def _wandb_credentials() -> bool:
    """A key wandb will find: WANDB_API_KEY, or `wandb login`'s entry for its host in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def _goes_offline() -> bool:
    """No key wandb would find, no sweep (whose agent sets none) and no WANDB_MODE of the user's."""
    return not (_wandb_credentials() or "WANDB_MODE" in os.environ or os.environ.get("WANDB_SWEEP_ID"))


class Tracker:
    """No-op unless enabled; every method is safe to call on any rank."""

    def __init__(self, enabled: bool, run_dir: Path, config: dict[str, Any], wandb_cfg: WandbConfig,
                 is_main: bool = True):
        self.run = None
        if not (enabled and is_main):
            return
        import wandb

        if _goes_offline():
            os.environ["WANDB_MODE"] = "offline"
        run_dir = Path(run_dir).resolve()
        run_id = "seal-" + hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
        self.run = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, group=wandb_cfg.group,
                              name=wandb_cfg.name or run_dir.name, tags=wandb_cfg.tags, id=run_id, resume="allow",
                              dir=str(run_dir), config=redacted(config))
        self.run.define_metric("round")
        for prefix in ("round/*", "reward/*", "timing/*"):
            self.run.define_metric(prefix, step_metric="round")

    @classmethod
    def off(cls) -> "Tracker":
        """A tracker that logs nothing (every method is a no-op)."""
        return cls(False, Path("."), {}, WandbConfig())

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log_round(self, round_: int, stats: RoundRecord, records: Sequence[RewardRecord],
                  edits: Sequence[SelfEditRecord]) -> None:
        if not self.enabled:
            return
        import wandb

        numbers = {k: v for k, v in stats.to_json().items() if isinstance(v, (int, float))}
        data = {"round": round_, **{f"round/{k}": v for k, v in numbers.items()
                                    if k != "round" and not (isinstance(v, float) and math.isnan(v))}}
        rewards = [r.reward for r in records if r.reward is not None]
        if rewards:
            data["reward/distribution"] = wandb.Histogram(rewards)
        ok = [r for r in records if r.ok]
        if ok:
            data["timing/absorb_seconds"] = sum(r.seconds["absorb"] for r in ok) / len(ok)
            data["timing/score_seconds"] = sum(r.seconds["score"] for r in ok) / len(ok)
        mean_reward = edit_rewards(records)
        table = wandb.Table(columns=["round", "instance", "index", "status", "text", "reward"])
        for e in edits:
            table.add_data(round_, e.instance, e.index, e.status, e.text, mean_reward.get(e.key, 0.0))
        data[f"self_edits/round{round_}"] = table
        self.run.log(data)

    def log_eval(self, rows: Sequence[dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        import wandb

        cols = list(rows[0])
        table = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])
        summary = {f"eval/{r['condition']}/single_mean": r["single_mean"] for r in rows}
        self.run.log({"eval/table": table})
        self.run.summary.update({k: v for k, v in summary.items() if not math.isnan(v)})

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; a nonzero `exit_code` (an error, a stop) marks it failed rather than finished."""
        if self.enabled:
            self.run.finish(exit_code=exit_code)
            self.run = None


class Phase:
    """A named stretch of work with a known number of steps, reported so that a log is never silent.

    On an interactive terminal of the main process: a tqdm bar. Elsewhere (a log file, a CI job, a
    Slurm output): a line when the phase starts, a line at least every `every` seconds while it runs
    (from a timer thread, so also while one long step is in progress), and a line with the count and
    elapsed time when it ends. Other ranks stay silent."""

    def __init__(self, what: str, total: int, is_main: bool = True, every: float = 30.0):
        import sys
        import threading

        from tqdm.auto import tqdm

        self.what, self.total, self.every = what, total, every
        self.n, self.start = 0, time.monotonic()
        self.tty = is_main and sys.stderr.isatty()
        self.logs = is_main and not self.tty
        self.bar = tqdm(total=total, desc=what, leave=False, disable=not self.tty)
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._beat, daemon=True) if self.logs else None

    def __enter__(self) -> "Phase":
        if self.logs:
            if self.total:
                log.info("%s: %d to do", self.what, self.total)
            self._timer.start()
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        self.bar.close()
        if self.logs and exc_type is None:
            log.info("%s: %d/%d done in %.0fs", self.what, self.n, self.total, time.monotonic() - self.start)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            log.info("%s: %d/%d done, %.0fs so far", self.what, self.n, self.total, time.monotonic() - self.start)


@contextlib.contextmanager
def heartbeat(what: str, every: float = 30.0) -> Iterator[None]:
    """One long step with no count (loading or saving a model: minutes for a 72B one): silent when it
    ends within `every` seconds, else a line every `every` seconds while it runs and one when it ends.
    (Other ranks log at warning level only, so they stay silent.)"""
    import threading

    start, stop = time.monotonic(), threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            log.info("%s: %.0fs so far", what, time.monotonic() - start)

    timer = threading.Thread(target=beat, daemon=True)
    timer.start()
    try:
        yield
    finally:
        stop.set()
        timer.join()
        if time.monotonic() - start >= every:
            log.info("%s: done in %.0fs", what, time.monotonic() - start)


@contextlib.contextmanager
def quiet_trainer(trainer, what: str, is_main: bool = True):
    """While `trainer.train()` runs: its per-step dicts go to our logger at debug level (and to wandb
    through the trainer's own integration when that is on) instead of stdout, and the log gets a
    progress line at least every 30 s."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class StepLog(TrainerCallback):
        def __init__(self, phase: Phase):
            self.phase = phase

        def on_train_begin(self, args, state, control, **kwargs):
            self.phase.total = self.phase.bar.total = state.max_steps
            if self.phase.logs:
                log.info("%s: %d optimizer steps", what, state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            self.phase.update()

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.debug("%s, step %d: %s", what, state.global_step, logs)

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    with Phase(what, 0, is_main) as phase:
        callback = StepLog(phase)
        trainer.add_callback(callback)
        try:
            yield
        finally:
            trainer.remove_callback(callback)
