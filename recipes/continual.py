"""Continual self-edits: the paper's forgetting experiment (K passages absorbed and merged in sequence).

    python recipes/continual.py --config recipes/knowledge/smollm2-135m.yaml --continual.passages 4 \\
        --continual.sequences 3 [--continual.teacher fixed] [--continual.paper_results overall_results.json]
    accelerate launch --num_processes N recipes/continual.py ...   (each process runs every N-th sequence)

Results go to `output_dir/continual/`: `continual.json` (every sequence's matrix, mean, sd, forgetting),
`continual.md` (the tables; the paper's matrix beside ours when `continual.paper_results` is given);
`python recipes/report.py output_dir/continual` draws the heatmap. A restarted command resumes.
"""

from __future__ import annotations

import _no_shadow  # noqa: F401  (first: see its docstring)

# isort: split

import sys

from seal.run import load_split, start
from seal.shared.config import ContinualRunConfig
from seal.teacher.continual import format_forgetting, format_matrix, paper_matrix, run_continual


def main(argv: list[str]) -> int:
    with start(argv, what="continual run", config_cls=ContinualRunConfig, subdir="continual") as run:
        cfg = run.cfg
        pool = load_split(run, "train")
        paper = paper_matrix(cfg.continual.paper_results) if cfg.continual.paper_results else None
        result = run_continual(cfg, run.domain, run.store, pool, run.dist)
        if run.dist.is_main:
            k, s = cfg.continual.passages, cfg.continual.sequences
            text = [f"Continual self-edits: accuracy % after each merged update (rows) on each passage of the "
                    f"sequence (columns), mean ± sd over {result['complete']} of {s} sequences, K={k}, "
                    f"teacher {cfg.continual.teacher}", "", format_matrix(result["mean"], result["std"]), "",
                    "Forgetting: mean accuracy over the K passages right after each one's own update, and after "
                    "all K updates", "", format_forgetting(result)]
            if paper is not None:
                text += ["", "The paper's matrix (official overall_results.json, mean)", "",
                         format_matrix(paper)]
            run.store.write_json("continual.json", {**result, "paper_mean": paper})
            run.store.write_text("continual.md", "\n".join(text) + "\n")
            print("\n".join(text), flush=True)
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
