"""Plots and a markdown report for a SEAL run directory.

    python recipes/report.py runs/knowledge-smollm2-135m

Writes into RUN_DIR/report/: reward_by_round.png (reward distribution per round), eval_conditions.png
(held-out accuracy per condition with standard-error bars), reward_vs_length.png (reward against
self-edit length), and report.md that links them beside the round and evaluation tables.
"""

from __future__ import annotations

import _no_shadow  # noqa: F401  (first: see its docstring)

# isort: split

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from seal.shared.records import Record, RewardRecord, RoundRecord, SelfEditRecord, edit_rewards

matplotlib.use("Agg")


def read(run: Path, table: str, cls: type[Record]) -> list:
    """Every rank's rows of a table (a torn last line of a killed writer is skipped)."""
    rows = []
    for path in [run / f"{table}.jsonl", *sorted(run.glob(f"{table}.rank*.jsonl"))]:
        if path.exists():
            rows += [cls.from_json(json.loads(line)) for line in path.read_text().splitlines() if line.endswith("}")]
    return rows


def round_rewards(records: list[RewardRecord]) -> dict[tuple[int, str, int], float]:
    """Mean reward over seeds per (round, instance, self-edit), as the outer loop computes it."""
    return {(r, iid, idx): v for r in sorted({rec.round for rec in records})
            for (iid, idx), v in edit_rewards([rec for rec in records if rec.round == r]).items()}


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rewards(rewards: dict, out: Path) -> Path | None:
    rounds = sorted({k[0] for k in rewards})
    if not rounds:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    data = [[v for k, v in rewards.items() if k[0] == r] for r in rounds]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(rounds) + 1), [str(r) for r in rounds])
    for i, values in enumerate(data, 1):
        ax.scatter([i] * len(values), values, s=12, alpha=0.5, color="tab:blue")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="ReST-EM round", ylabel="reward (accuracy gain)", title="Reward per self-edit")
    return save(fig, out / "reward_by_round.png")


def plot_eval(rows: list[dict], out: Path) -> Path | None:
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["condition"] for r in rows]
    settings = [s for s in ("single", "cpt") if f"{s}_mean" in rows[0]]
    width = 0.8 / len(settings)
    for j, setting in enumerate(settings):
        means = [100 * float(r[f"{setting}_mean"] or "nan") for r in rows]
        errs = [0 if math.isnan(float(r[f"{setting}_se"] or "nan")) else 100 * float(r[f"{setting}_se"])
                for r in rows]
        xs = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label="single-instance" if setting == "single" else "CPT")
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
    ax.set(ylabel="held-out accuracy %", title="Held-out evaluation")
    ax.legend()
    return save(fig, out / "eval_conditions.png")


def plot_length(rewards: dict, edits: list[SelfEditRecord], out: Path) -> Path | None:
    points = [(len(e.text.split()), rewards[(e.round, e.instance, e.index)], e.round)
              for e in edits if (e.round, e.instance, e.index) in rewards]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in sorted({p[2] for p in points}):
        xs, ys = zip(*[(p[0], p[1]) for p in points if p[2] == r])
        ax.scatter(xs, ys, s=16, alpha=0.7, label=f"round {r}")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="self-edit length (words)", ylabel="reward", title="Reward against self-edit length")
    ax.legend()
    return save(fig, out / "reward_vs_length.png")


def plot_continual(run: Path, out: Path) -> Path | None:
    """Heatmaps of the continual run's mean matrix (rows: updates merged, columns: passages), and the
    paper's beside it when the run was given the official results."""
    path = run / "continual.json"
    if not path.exists():
        return None
    import numpy as np

    data = json.loads(path.read_text())
    panels = [("ours (mean over sequences)", data["mean"])]
    if data.get("paper_mean"):
        panels.append(("paper (official results)", data["paper_mean"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], panels):
        grid = np.array([[np.nan if v is None else 100 * v for v in row] for row in matrix], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100)
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 50 else "black", fontsize=8)
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        ax.set(title=title, xlabel="passage (order of absorption)", ylabel="updates merged")
        fig.colorbar(image, ax=ax, label="accuracy %")
    return save(fig, out / "continual_heatmap.png")


def eval_rows(run: Path) -> list[dict]:
    path = run / "eval.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args(argv)
    run = args.run_dir
    if not (run / "config.yaml").is_file():
        print(f"error: {run} is not a SEAL run directory (no config.yaml)", file=sys.stderr)
        return 2
    out = run / "report"
    out.mkdir(exist_ok=True)
    records, edits = read(run, "records", RewardRecord), read(run, "self_edits", SelfEditRecord)
    rewards = round_rewards(records)
    plots = [p for p in (plot_rewards(rewards, out), plot_eval(eval_rows(run), out),
                         plot_length(rewards, edits, out), plot_continual(run, out)) if p]
    lines = [f"# SEAL run report: {run.name}", ""]
    for r in read(run, "rounds", RoundRecord):
        mean = "–" if r.mean_reward is None else f"{r.mean_reward:+.3f}"  # NaN is stored as null
        positive = "–" if r.fraction_positive is None else f"{100 * r.fraction_positive:.0f}%"
        lines.append(f"- round {r.round}: mean reward {mean}, {positive} positive, kept {r.kept} of {r.self_edits}")
    if (run / "continual.md").exists():
        lines += ["", "## Continual self-edits", "", (run / "continual.md").read_text().strip()]
    if (run / "eval.md").exists():
        lines += ["", "## Held-out evaluation", "", (run / "eval.md").read_text().strip()]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'report.md'} and {len(plots)} plot(s): {', '.join(p.name for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
