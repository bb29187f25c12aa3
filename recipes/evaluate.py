"""Held-out evaluation of a SEAL run: the paper's conditions side by side (markdown + CSV table).

    python recipes/evaluate.py --config recipes/knowledge/smollm2-135m.yaml [--section.key VALUE ...]
    accelerate launch recipes/evaluate.py --config ...   (each process takes a share of the work)

It reads the teachers of the run directory named by the config (`output_dir`, written by
recipes/seal.py with the same config) and adds its samples and scores there, so a rerun resumes.
Conditions and settings come from the `eval:` section; `--eval.conditions "[no_update, file]"
--eval.self_edits_file edits.jsonl` compares with self-edits written by any other model.
"""

from __future__ import annotations

import _no_shadow  # noqa: F401  (first: see its docstring)

# isort: split

import sys

from seal.run import load_split, start
from seal.teacher import evaluate, write_eval_tables


def main(argv: list[str]) -> int:
    with start(argv, what="evaluation") as run:
        heldout = load_split(run, "eval")
        rows = evaluate(run.cfg, run.domain, run.store, heldout, run.dist)
        if run.dist.is_main:
            table = write_eval_tables(run.store, rows)
            print(f"Held-out evaluation ({len(heldout)} instances):\n{table}")
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
