"""SEAL: the teacher writes self-edits, the student absorbs each one, the student's gain is the reward.

    accelerate launch recipes/seal.py --config recipes/knowledge/smollm2-135m.yaml [--section.key VALUE ...]
    python recipes/seal.py --config recipes/knowledge/smollm2-135m.yaml --inner.lr 3e-3

A restarted command resumes from the run directory (`output_dir`) without redoing finished work.
"""

from __future__ import annotations

import logging
import os
import sys
import time

# This script is named like the package: drop its own folder from the import path so that
# `import seal` finds the library, not this file.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402

from seal.shared import (ConfigError, DataError, ModelLoadError, RunDirError, RunStore,  # noqa: E402
                         make_domain, parse_config)
from seal.shared.config import to_dict  # noqa: E402
from seal.shared.dist import init_dist  # noqa: E402
from seal.shared.tracking import Tracker  # noqa: E402
from seal.teacher import evaluate, format_csv, format_markdown, format_rounds, run_grpo, run_rounds  # noqa: E402

log = logging.getLogger("seal")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = parse_config(argv)
        domain = make_domain(cfg.domain)
        dist = init_dist(cpu=cfg.teacher.device == "cpu")
        store = RunStore(cfg.output_dir, to_dict(cfg), rank=dist.rank)
        train = domain.load(cfg.data.source, cfg.data.train_split)
    except (ConfigError, DataError, RunDirError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(cfg.log_level.upper() if dist.is_main else "WARNING")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tracker = Tracker(cfg.report_to == "wandb", store.path, to_dict(cfg), cfg.wandb, dist.is_main)
    log.info("run directory %s: %d %s training instances, %d round(s), k=%d, seeds=%s, %d process(es)",
             store.path, len(train), domain.name, cfg.outer.rounds, cfg.sampling.k, cfg.inner.seeds, dist.world)
    start = time.perf_counter()
    try:
        if cfg.outer.rounds:
            outer_loop = run_grpo if cfg.outer.algorithm == "grpo" else run_rounds
            rounds = outer_loop(cfg, domain, store, train, tracker, dist)
            if dist.is_main:
                print(f"{cfg.outer.algorithm} rounds:\n" + format_rounds(rounds) + "\n", flush=True)
        if cfg.eval.enabled:
            heldout = domain.load(cfg.data.source, cfg.data.eval_split)
            rows = evaluate(cfg, domain, store, heldout, dist)
        if cfg.eval.enabled and dist.is_main:
            table = format_markdown(rows)
            store.write_text("eval.md", table + "\n")
            store.write_text("eval.csv", format_csv(rows))
            tracker.log_eval(rows)
            grader = f", grader {cfg.domain['grader']}" if "grader" in cfg.domain else ""
            print(f"Held-out evaluation ({len(heldout)} instances{grader}):\n{table}\n", flush=True)
        dist.barrier()
    except (ModelLoadError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        tracker.finish()
    log.info("done in %.1fs; records in %s", time.perf_counter() - start, store.path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
