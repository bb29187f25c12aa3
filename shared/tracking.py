"""Experiment tracking: one wandb run per SEAL run, written by the main process only.

`report_to: wandb` turns it on. Without `WANDB_API_KEY` (and no `WANDB_MODE` of the user's) the run
is offline, so nothing needs the network; `wandb sync` uploads it later. The config is logged with
secrets redacted. The run id is derived from the run directory, so a resumed SEAL run continues the
same wandb run, and TRL's trainer (teacher SFT) logs into it instead of opening another.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

from seal.shared.config import WandbConfig, redacted

log = logging.getLogger("seal")


class Tracker:
    """No-op unless enabled; every method is safe to call on any rank."""

    def __init__(self, enabled: bool, run_dir: Path, config: dict[str, Any], wandb_cfg: WandbConfig,
                 is_main: bool = True):
        self.run = None
        if not (enabled and is_main):
            return
        import wandb

        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        run_dir = Path(run_dir).resolve()
        run_id = "seal-" + hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
        self.run = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, group=wandb_cfg.group,
                              name=wandb_cfg.name or run_dir.name, tags=wandb_cfg.tags, id=run_id, resume="allow",
                              dir=str(run_dir), config=redacted(config))
        self.run.define_metric("round")
        for prefix in ("round/*", "reward/*", "timing/*"):
            self.run.define_metric(prefix, step_metric="round")

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def log_round(self, round_: int, stats: dict[str, Any], records: Sequence[dict[str, Any]],
                  edits: Sequence[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        import wandb

        rewards = [r["reward"] for r in records if r.get("reward") is not None]
        ok = [r for r in records if r.get("status") == "ok"]
        data = {"round": round_, **{f"round/{k}": v for k, v in stats.items() if isinstance(v, (int, float))
                                    and v is not None and not (isinstance(v, float) and math.isnan(v))}}
        if rewards:
            data["reward/distribution"] = wandb.Histogram(rewards)
        if ok:
            data["timing/absorb_seconds"] = sum(r["seconds"]["absorb"] for r in ok) / len(ok)
            data["timing/score_seconds"] = sum(r["seconds"]["score"] for r in ok) / len(ok)
        mean_reward = {}
        for r in records:
            mean_reward.setdefault((r["instance"], r["index"]), []).append(r["reward"] or 0.0)
        table = wandb.Table(columns=["round", "instance", "index", "status", "text", "reward"])
        for e in edits:
            vals = mean_reward.get((e["instance"], e["index"]), [0.0])
            table.add_data(round_, e["instance"], e["index"], e["status"], e["text"], sum(vals) / len(vals))
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

    def finish(self) -> None:
        if self.enabled:
            self.run.finish()
            self.run = None


def progress(total: int, desc: str, is_main: bool = True):
    """A tqdm bar on an interactive terminal of the main process; silent elsewhere (logs carry progress)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not (is_main and sys.stderr.isatty()))
