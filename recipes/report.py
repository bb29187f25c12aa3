"""Plots and a markdown report for a SEAL run directory.

    python recipes/report.py runs/knowledge-smollm2-135m

Writes into RUN_DIR/report/: reward_by_round.png (reward distribution per round), eval_conditions.png
(held-out accuracy per condition with standard-error bars), reward_vs_length.png (reward against
self-edit length), learning_curve.png (held-out accuracy per round with 95 % intervals, the other
conditions as lines), and report.md that links them beside the round and evaluation tables, the
evaluation under every recorded grader, each condition's paired difference from `--against`, what the
teacher writes (length, items, copying, gold answers stated) and the time each phase took.
"""

from __future__ import annotations

import _no_shadow  # noqa: F401  (first: see its docstring)

# isort: split

import argparse
import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from seal.shared.graders import normalize
from seal.shared.records import (
    BaselineRecord,
    EvalRecord,
    Record,
    RewardRecord,
    RoundRecord,
    SelfEditRecord,
    edit_rewards,
    mean_or_nan,
    mean_se,
    one_per_cell,
    teacher_round,
)
from seal.shared.store import RunDirError, read_table

matplotlib.use("Agg")


def read(run: Path, table: str, cls: type[Record]) -> list:
    """Every rank's rows of a table, as the run store reads them."""
    return [cls.from_json(row) for row in read_table(run, table)]


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


# ---------------------------------------------------------------- the evaluation read closer

GRADERS = ("contains", "exact_match", "f1")


def current_cells(run: Path) -> list[EvalRecord]:
    """The single-instance cells the last evaluation's tables were made of (its eval_current.json: the key
    of each condition and the held-out instances); without that file, each condition's last eval_key. Rows
    made before evaluation keys existed carry the run's legacy key (eval_settings.json), as in the evaluation."""
    settings = run / "eval_settings.json"
    legacy = json.loads(settings.read_text())["legacy_key"] if settings.exists() else None
    records = [replace(r, eval_key=r.eval_key or legacy)
               for r in read(run, "eval_records", EvalRecord) if r.setting == "single"]
    marker = run / "eval_current.json"
    if marker.exists():
        current = json.loads(marker.read_text())
        held = set(current["instances"])
        keys, earlier = current["keys"], current.get("earlier_keys", {})  # earlier: before the keys were split
        return one_per_cell([r for r in records if r.instance in held
                             and r.eval_key in (keys.get(r.condition), earlier.get(r.condition))],
                            lambda r: r.key, lambda r: r.eval_key == keys.get(r.condition))
    latest = {r.condition: r.eval_key for r in records}
    return [r for r in records if r.eval_key == latest[r.condition]]


def graders(cells: list[EvalRecord]) -> tuple[str, ...]:
    """The graders every cell recorded; ("score",) (the configured grader's) where some did not."""
    if cells and all(r.grades for r in cells):
        return tuple(g for g in GRADERS if all(g in r.grades for r in cells))
    return ("score",)


def per_instance(cells: list[EvalRecord], grader: str) -> dict[str, dict[str, float]]:
    """{condition: {instance: score}} under `grader` ("score": the configured grader's): the mean over an
    instance's self-edits (the oracle: the best of them), then over seeds, as the evaluation table."""
    seeds: dict[str, dict[str, dict[object, list[float]]]] = {}
    for r in cells:
        value = r.score if grader == "score" else r.grades[grader]
        seeds.setdefault(r.condition, {}).setdefault(r.instance, {}).setdefault(r.seed, []).append(value)
    return {c: {i: mean_or_nan([(max if c == "oracle" else mean_or_nan)(v) for v in by_seed.values()])
                for i, by_seed in inst.items()} for c, inst in seeds.items()}


def _pct(mean: float, se: float, z: float = 1.0) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.1f}" + ("" if math.isnan(se) else f" ± {100 * z * se:.1f}")


def grader_table(cells: list[EvalRecord]) -> str:
    """Accuracy per condition under every recorded grader: mean ± SE over instances."""
    names = graders(cells)
    tables = {g: per_instance(cells, g) for g in names}
    lines = ["| condition | n | " + " | ".join(f"{g} %" for g in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for c in tables[names[0]]:
        stats = [mean_se(list(tables[g][c].values())) for g in names]
        lines.append(f"| {c} | {stats[0][2]} | " + " | ".join(_pct(m, se) for m, se, _ in stats) + " |")
    return "\n".join(lines)


def paired_table(cells: list[EvalRecord], against: list[str]) -> str:
    """Each condition minus each reference condition on the instances both hold: mean difference with
    its 95 % interval (1.96 SE over instances), and on how many instances it is ahead and behind. Pairing
    by instance removes what passages share, which the SE of two separate means does not."""
    lines = ["| condition | minus | grader | n | difference (pp, 95 % CI) | ahead | behind |",
             "|---|---|---|---:|---:|---:|---:|"]
    for g in graders(cells):
        table = per_instance(cells, g)
        refs = [a for a in against if a in table]
        for j, ref in enumerate(refs):
            # an earlier reference was already compared with this one: its mirror row would repeat it
            for c in [c for c in table if c != ref and c != "no_update" and c not in refs[:j]]:
                common = sorted(set(table[c]) & set(table[ref]))
                diffs = [table[c][i] - table[ref][i] for i in common]
                mean, se, n = mean_se(diffs)
                wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
                lines.append(f"| {c} | {ref} | {g} | {n} | {_pct(mean, se, 1.96)} | {wins} | {losses} |")
    return "\n".join(lines)


def plot_curve(cells: list[EvalRecord], grader: str, out: Path) -> Path | None:
    """Held-out accuracy of each round's self-edits with 95 % intervals; the other conditions (no update,
    passage only, published self-edits) as horizontal lines with their intervals shaded."""
    grader = grader if grader in graders(cells) else "score"
    table = per_instance(cells, grader)
    points = sorted((r, c) for c in table if (r := teacher_round(c)) is not None)
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    stats = [mean_se(list(table[c].values())) for _, c in points]
    xs = [r for r, _ in points]
    ax.errorbar(xs, [100 * m for m, _, _ in stats], yerr=[0 if math.isnan(se) else 196 * se for _, se, _ in stats],
                marker="o", capsize=4, color="black", label="teacher of round r (r=0: base)")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, c in zip(colours, [c for c in table if teacher_round(c) is None]):
        m, se, _ = mean_se(list(table[c].values()))
        ax.axhline(100 * m, color=colour, ls="--", lw=1, label=c)
        if not math.isnan(se):
            ax.axhspan(100 * (m - 1.96 * se), 100 * (m + 1.96 * se), color=colour, alpha=0.08)
    ax.set_xticks(xs)
    ax.set(xlabel="ReST-EM round", ylabel=f"held-out accuracy % ({grader})",
           title=f"Held-out accuracy by round ({len(next(iter(table.values())))} passages, 95 % CI)")
    ax.legend(fontsize=7, loc="best")
    return save(fig, out / "learning_curve.png")


def timing_table(run: Path) -> str:
    """Wall time per phase, from the records (seconds per adapter as the inner loop reports them, summed)."""
    rows = []
    edits = read(run, "self_edits", SelfEditRecord)
    records = read(run, "records", RewardRecord)
    updates = {r.round: r.seconds["update"] for r in read(run, "rounds", RoundRecord) if r.seconds}
    baselines = [b.seconds for b in read(run, "baselines", BaselineRecord) if b.seconds is not None]
    if baselines:
        rows.append(f"| no-update baselines (every student, {len(baselines)} instances) | {sum(baselines) / 60:.1f} |")
    for r in sorted({e.round for e in edits if e.round is not None}):
        sample = sum(e.sample_seconds or 0 for e in edits if e.round == r)
        inner = sum(sum((x.seconds or {}).values()) for x in records if x.round == r)
        rows.append(f"| round {r}: sampling | {sample / 60:.1f} |")
        rows.append(f"| round {r}: inner loops | {inner / 60:.1f} |")
        if r in updates:
            rows.append(f"| round {r}: teacher update | {updates[r] / 60:.1f} |")
    evals = read(run, "eval_records", EvalRecord)
    sampled = read(run, "eval_self_edits", SelfEditRecord)
    for c in dict.fromkeys(e.condition for e in sampled if e.sample_seconds):
        seconds = sum(e.sample_seconds or 0 for e in sampled if e.condition == c)
        rows.append(f"| evaluation: sampling {c} | {seconds / 60:.1f} |")
    for c in dict.fromkeys(e.condition for e in evals):
        timed = [e for e in evals if e.condition == c and e.seconds]
        # one adapter per seed (and evaluation), its time on every instance's row
        cpt = {(e.eval_key, e.seed): sum(e.seconds.values()) for e in timed if e.setting == "cpt"}
        single = sum(sum(e.seconds.values()) for e in timed if e.setting == "single")
        if single or cpt:
            rows.append(f"| evaluation: {c} | {(single + sum(cpt.values())) / 60:.1f} |")
    if not rows:
        return ""
    return "\n".join(["| phase | minutes |", "|---|---:|", *rows])


def passages(run: Path) -> dict:
    """The knowledge run's passages by id (every split it names, from its data source)."""
    import yaml

    from seal.shared.knowledge import KnowledgeDomain

    config = yaml.safe_load((run / "config.yaml").read_text())
    config = config.get("config", config)
    if config.get("domain", {}).get("name", "knowledge") != "knowledge":
        return {}
    data, domain = config.get("data", {}), KnowledgeDomain()
    found = {}
    for split in (data.get("train_split", "train"), data.get("eval_split", "heldout")):
        try:
            found.update({p.id: p for p in domain.load(data.get("source", "builtin"), split)})
        except (OSError, ValueError):  # moved data, an empty split: the table counts what it left out
            continue
    return found


def self_edit_table(run: Path) -> str:
    """What the teacher writes, per training round and per evaluation condition: how long, how many
    items, how much of it is copied from the passage (share of its words found in the passage), and the
    share of items that state a gold answer of the passage's questions (normalised, as `contains`)."""
    by_id = passages(run)
    if not by_id:
        return ""
    groups: dict[str, list[SelfEditRecord]] = {}
    for e in read(run, "self_edits", SelfEditRecord):
        groups.setdefault(f"round {e.round} (training)", []).append(e)
    for e in read(run, "eval_self_edits", SelfEditRecord):
        groups.setdefault(f"{e.condition} (held out)", []).append(e)
    lines = ["| self-edits | n | usable % | words | items | words in passage % | items stating a gold answer % |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    missing = sum(e.instance not in by_id for edits in groups.values() for e in edits)
    for name, edits in groups.items():
        rows = [(e, by_id[e.instance]) for e in edits if e.instance in by_id]
        if not rows:
            continue
        usable = [(e, p) for e, p in rows if e.ok]
        words = [len(e.text.split()) for e, _ in rows]
        items = [len(e.items) for e, _ in usable]
        copied, stating = [], []
        for e, p in usable:
            passage = set(normalize(p.context).split())
            tokens = normalize(e.text).split()
            copied.append(sum(t in passage for t in tokens) / max(1, len(tokens)))
            golds = [normalize(a) for q in p.questions for a in (q.answers or [q.answer]) if normalize(a)]
            texts = [normalize(str(item)) for item in e.items]
            stating.append(sum(any(g in t for g in golds) for t in texts) / max(1, len(texts)))
        lines.append(f"| {name} | {len(rows)} | {100 * len(usable) / len(rows):.0f} | {mean_or_nan(words):.0f} | "
                     f"{mean_or_nan(items):.1f} | {100 * mean_or_nan(copied):.0f} | {100 * mean_or_nan(stating):.0f} |")
    if missing:
        lines += ["", f"({missing} self-edits left out: their passages are not in the run's data source as found now)"]
    return "\n".join(lines)


def eval_rows(run: Path) -> list[dict]:
    path = run / "eval.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--grader", choices=GRADERS, default="contains",
                    help="the grader of the learning curve (the tables show every recorded one)")
    ap.add_argument("--against", default="context_only,base_teacher",
                    help="conditions every other one is compared with, instance by instance (comma-separated)")
    args = ap.parse_args(argv)
    run = args.run_dir
    if not (run / "config.yaml").is_file():
        print(f"error: {run} is not a SEAL run directory (no config.yaml)", file=sys.stderr)
        return 2
    try:
        return write_report(run, args.grader, [c for c in args.against.split(",") if c])
    except RunDirError as err:  # a damaged line in one of its tables
        print(f"error: {err}", file=sys.stderr)
        return 2


def write_report(run: Path, grader: str, against: list[str]) -> int:
    out = run / "report"
    out.mkdir(exist_ok=True)
    records, edits = read(run, "records", RewardRecord), read(run, "self_edits", SelfEditRecord)
    rewards = round_rewards(records)
    cells = current_cells(run)
    plots = [p for p in (plot_rewards(rewards, out), plot_eval(eval_rows(run), out),
                         plot_length(rewards, edits, out), plot_continual(run, out),
                         plot_curve(cells, grader, out)) if p]
    lines = [f"# SEAL run report: {run.name}", ""]
    for r in read(run, "rounds", RoundRecord):
        mean = "–" if r.mean_reward is None else f"{r.mean_reward:+.3f}"  # NaN is stored as null
        positive = "–" if r.fraction_positive is None else f"{100 * r.fraction_positive:.0f}%"
        lines.append(f"- round {r.round}: mean reward {mean}, {positive} positive, kept {r.kept} of {r.self_edits}")
    if (run / "continual.md").exists():
        lines += ["", "## Continual self-edits", "", (run / "continual.md").read_text().strip()]
    if (run / "eval.md").exists():
        lines += ["", "## Held-out evaluation", "", (run / "eval.md").read_text().strip()]
    if cells:
        lines += ["", "## Single-instance accuracy under every grader (mean ± SE over instances)", "",
                  grader_table(cells), "", "## Paired differences (per instance)", "",
                  paired_table(cells, against)]
    for title, table in (("What the teacher writes", self_edit_table(run)), ("Time per phase", timing_table(run))):
        if table:
            lines += ["", f"## {title}", "", table]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'report.md'} and {len(plots)} plot(s): {', '.join(p.name for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
