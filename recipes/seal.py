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
from seal.teacher import build_session, format_table, reward_round, summary_rows  # noqa: E402

log = logging.getLogger("seal")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = parse_config(argv)
        domain = make_domain(cfg.domain)
        store = RunStore(cfg.output_dir, to_dict(cfg))
        train = domain.load(cfg.data.source, cfg.data.train_split)
    except (ConfigError, DataError, RunDirError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    log.info("run directory %s: %d %s instances, k=%d, seeds=%s", store.path, len(train), domain.name,
             cfg.sampling.k, cfg.inner.seeds)
    start = time.perf_counter()
    try:
        session = build_session(cfg, domain)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("models ready in %.1fs", time.perf_counter() - start)
    for round_ in range(cfg.outer.rounds):
        records = reward_round(session, store, train, round_)
        table = format_table(summary_rows(domain, train, records))
        store.write_text(f"summary_round{round_}.md", table + "\n")
        print(f"\nRound {round_}: baseline and reward per instance ({domain.name}, k={cfg.sampling.k}, "
              f"seeds={cfg.inner.seeds})\n{table}\n")
    log.info("done in %.1fs; records in %s", time.perf_counter() - start, store.path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
