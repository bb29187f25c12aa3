"""Seconds per self-edit evaluation (absorb + score) and peak memory of the student inner loop.

    python benchmarks/inner_loop.py                       # embedded model, demo inner-loop settings
    python benchmarks/inner_loop.py --model tiny --n 4    # a tiny model built from config

Each self-edit is a fixed restatement of a built-in passage (its sentences as items), so the figures
measure the inner loop alone, not the teacher. Every thread count is timed in the same process, on the
same self-edits, after one warm-up evaluation; compare the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from seal.shared.config import InnerConfig, ModelConfig, parse_config
from seal.shared.domain import SelfEdit
from seal.shared.knowledge import KnowledgeDomain
from seal.shared.models import load_model
from seal.student import Student

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_model_dir() -> Path:
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_model_dir

    return make_model_dir(Path(tempfile.mkdtemp(prefix="seal-bench-")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="embedded | tiny | a path or hub name")
    ap.add_argument("--recipe", default=str(REPO / "recipes/knowledge/smollm2-135m.yaml"),
                    help="inner-loop settings are read from this recipe")
    ap.add_argument("--n", type=int, default=4, help="self-edits evaluated per thread setting")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to compare")
    args = ap.parse_args()

    cfg = parse_config(["--config", args.recipe])
    inner: InnerConfig = cfg.inner
    name = str(tiny_model_dir()) if args.model == "tiny" else args.model
    model, tok = load_model(ModelConfig(name=name))
    domain = KnowledgeDomain(KnowledgeDomain.Options(**{k: v for k, v in cfg.domain.items() if k != "name"}))
    student = Student(model, tok, inner, domain, chat=tok.chat_template is not None)
    passages = domain.load("builtin", "train")[: args.n + 1]
    plans = []
    for p in passages:
        items = [s for s in re.split(r"(?<=\.)\s+", p.context) if s]
        plans.append((p, domain.plan(p, SelfEdit(text=p.context, items=items))))
    for p, _ in plans:
        student.baseline(p)  # cached once per student, as in a run; not part of a self-edit evaluation

    print(f"model={args.model} params={sum(x.numel() for x in model.parameters()) / 1e6:.1f}M "
          f"lora_r={inner.lora_r} targets={inner.target_modules} epochs={inner.epochs} "
          f"batch={inner.batch_size} lr={inner.lr} cpus={os.cpu_count()} torch={torch.__version__}")
    results = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        p0, plan0 = plans[0]
        student.evaluate_plan(p0, plan0, [0])  # warm-up
        absorb = score = tokens = 0.0
        start = time.perf_counter()
        for p, plan in plans[1:]:
            (o,) = student.evaluate_plan(p, plan, [0])
            absorb += o.absorb.seconds
            score += o.score_seconds
            tokens += o.absorb.tokens
        wall = time.perf_counter() - start
        n = len(plans) - 1
        results[threads] = wall / n
        print(f"threads={threads}: {wall / n:.2f} s per self-edit evaluation "
              f"(absorb {absorb / n:.2f} s, score {score / n:.2f} s), {tokens / absorb:.0f} train tokens/s, "
              f"{60 * n / wall:.1f} evaluations/min")
    base = min(results)
    for threads, sec in results.items():
        print(f"speed vs threads={base}: threads={threads} x{results[base] / sec:.2f}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
