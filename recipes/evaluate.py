"""Held-out evaluation of a SEAL run: the paper's conditions side by side (markdown + CSV table).

    python recipes/evaluate.py --config recipes/knowledge/smollm2-135m.yaml [--section.key VALUE ...]
    accelerate launch recipes/evaluate.py --config ...   (each process takes a share of the work)

It reads the teachers of the run directory named by the config (`output_dir`, written by
recipes/seal.py with the same config) and adds its samples and scores there, so a rerun resumes.
Conditions and settings come from the `eval:` section; `--eval.conditions "[no_update, file]"
--eval.self_edits_file edits.jsonl` compares with self-edits written by any other model.
"""

from __future__ import annotations

import logging
import os
import sys

sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402

from seal.shared import (ConfigError, DataError, ModelLoadError, RunDirError, RunStore,  # noqa: E402
                         make_domain, parse_config)
from seal.shared.config import to_dict  # noqa: E402
from seal.shared.dist import init_dist  # noqa: E402
from seal.teacher import evaluate, format_csv, format_markdown  # noqa: E402


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = parse_config(argv)
        domain = make_domain(cfg.domain)
        dist = init_dist(cpu=cfg.teacher.device == "cpu")
        store = RunStore(cfg.output_dir, to_dict(cfg), rank=dist.rank)
        heldout = domain.load(cfg.data.source, cfg.data.eval_split)
        logging.getLogger().setLevel(cfg.log_level.upper() if dist.is_main else "WARNING")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        rows = evaluate(cfg, domain, store, heldout, dist)
    except (ConfigError, DataError, RunDirError, ModelLoadError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not dist.is_main:
        return 0
    table = format_markdown(rows)
    store.write_text("eval.md", table + "\n")
    store.write_text("eval.csv", format_csv(rows))
    print(f"Held-out evaluation ({len(heldout)} instances):\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
