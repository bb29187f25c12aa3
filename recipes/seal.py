"""SEAL: the teacher writes self-edits, the student absorbs each one, the student's gain is the reward.

    accelerate launch recipes/seal.py --config recipes/knowledge/smollm2-135m.yaml [--section.key VALUE ...]
    python recipes/seal.py --config recipes/knowledge/smollm2-135m.yaml --inner.lr 3e-3
    python recipes/seal.py --help          # every config key with its type, default and meaning

A restarted command resumes from the run directory (`output_dir`) without redoing finished work.
"""

from __future__ import annotations

import _no_shadow  # noqa: F401  (first: lets this script, named like the package, import the package)

# isort: split

import logging
import sys
import time

from seal.run import load_split, start
from seal.teacher import evaluate, format_rounds, run_grpo, run_rounds, self_edit_files, write_eval_tables

log = logging.getLogger("seal")


def main(argv: list[str]) -> int:
    with start(argv) as run:
        cfg, domain, dist, store = run.cfg, run.domain, run.dist, run.store
        train = load_split(run, "train")
        heldout = load_split(run, "eval") if cfg.eval.enabled else []
        if cfg.eval.enabled:
            self_edit_files(cfg, domain, heldout)  # a bad file fails now, not after the rounds
        log.info("run directory %s: %d %s training instances, %d held-out, %d %s round(s), k=%d, seeds=%s, "
                 "%d process(es)", store.path, len(train), domain.name, len(heldout), cfg.outer.rounds,
                 cfg.outer.algorithm, cfg.sampling.k, cfg.inner.seeds, dist.world)
        started = time.perf_counter()
        if cfg.outer.rounds:
            outer_loop = run_grpo if cfg.outer.algorithm == "grpo" else run_rounds
            rounds = outer_loop(cfg, domain, store, train, run.tracker, dist)
            if dist.is_main:
                print(f"{cfg.outer.algorithm} rounds:\n" + format_rounds(rounds) + "\n", flush=True)
        if cfg.eval.enabled:
            rows = evaluate(cfg, domain, store, heldout, dist)
            if dist.is_main:
                table = write_eval_tables(store, rows)
                run.tracker.log_eval(rows)
                grader = f", grader {cfg.domain['grader']}" if "grader" in cfg.domain else ""
                print(f"Held-out evaluation ({len(heldout)} instances{grader}):\n{table}\n", flush=True)
        dist.barrier()
        log.info("done in %.1fs; records in %s", time.perf_counter() - started, store.path)
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
