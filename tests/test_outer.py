"""The outer loop as a user runs it: ReST-EM rounds, teacher_student mode, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO

VOLATILE = {"seconds", "sample_seconds"}


def args_for(model_dir, out, *extra):
    return [sys.executable, str(REPO / "recipes" / "seal.py"),
            "--config", str(REPO / "recipes/knowledge/smollm2-135m.yaml"), "--teacher.name", str(model_dir),
            "--output_dir", str(out), "--threads", "1", "--data.train_split", "train[:3]",
            "--data.eval_split", "heldout[:2]", "--sampling.max_new_tokens", "32", "--inner.epochs", "3",
            "--inner.seeds", "[0, 1]", "--outer.lr", "1e-3", *extra]


def table(out, name):
    path = out / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def weights(path):
    return load_file(str(path / "model.safetensors"))


def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def kill_when(cmd, cwd, condition, what, deadline_s=300):
    """Start the recipe and SIGKILL it as soon as `condition()` holds (polled); fail if it never does."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + deadline_s
    try:
        while not condition():
            assert proc.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_killed_mid_round_and_mid_update_resumes_to_the_same_results(tiny_model_dir, tmp_path):
    extra = ["--outer.rounds", "2", "--outer.epochs", "40", "--eval.enabled", "false"]
    ref = tmp_path / "ref"
    run(args_for(tiny_model_dir, ref, *extra), tmp_path)

    out = tmp_path / "killed"
    cmd = args_for(tiny_model_dir, out, *extra)
    kill_when(cmd, tmp_path, lambda: len(table(out, "records")) >= 3, "the third record of round 0")
    partial = table(out, "records")
    assert 3 <= len(partial) < len(table(ref, "records"))
    teachers = out / "teachers"
    updating = lambda: teachers.exists() and any(p.name.startswith(".round1") for p in teachers.iterdir())  # noqa: E731
    kill_when(cmd, tmp_path, updating, "the teacher update of round 0")
    assert not (teachers / "round1" / "seal_teacher_update.json").exists()  # killed mid-update
    assert table(out, "records")[: len(partial)] == partial  # nothing computed before was lost
    run(cmd, tmp_path)

    for name in ("self_edits", "records", "baselines", "rounds"):
        assert table(out, name) == table(ref, name), name
    for r in (1, 2):
        a, b = weights(ref / "teachers" / f"round{r}"), weights(out / "teachers" / f"round{r}")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"teacher of round {r}"
    assert not [p for p in teachers.iterdir() if p.name.startswith(".")]  # no staging left behind


@pytest.mark.slow
def test_teacher_student_mode_with_two_model_families(tiny_model_dir, tiny_qwen_dir, tmp_path):
    out = tmp_path / "ts"
    proc = run(args_for(tiny_model_dir, out, "--mode", "teacher_student", "--student.name", str(tiny_qwen_dir),
                        "--outer.rounds", "2", "--eval.seeds", "[0]"), tmp_path)
    baselines = table(out, "baselines")
    # the student stays fixed while the teacher learns: one baseline per instance, never re-measured
    assert len({b["student"] for b in baselines}) == 1 and len(baselines) == 3 + 2
    rounds = table(out, "rounds")
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:  # best_of_k: one per instance that had a usable self-edit
        usable = {e["instance"] for e in table(out, "self_edits") if e["round"] == r["round"] and e["status"] == "ok"}
        assert r["kept"] == len(usable)
    assert "round2_teacher" in proc.stdout and "| no_update |" in proc.stdout
    t0 = weights(tiny_model_dir)
    t2 = weights(out / "teachers" / "round2")
    assert any(not (t0[k] == t2[k]).all() for k in t0)
    header, first = (out / "eval.csv").read_text().splitlines()[:2]
    assert header.startswith("condition,single_mean,single_se") and first.startswith("no_update,")


@pytest.mark.slow
def test_self_mode_invalidates_the_baseline_when_the_teacher_changes(tiny_model_dir, tmp_path):
    out = tmp_path / "self"
    run(args_for(tiny_model_dir, out, "--outer.rounds", "2", "--eval.enabled", "false", "--outer.lr", "5e-3"),
        tmp_path)
    baselines = table(out, "baselines")
    assert len({b["student"] for b in baselines}) == 2  # round 1's student is round 1's teacher
    assert len(baselines) == 2 * 3


def test_evaluation_table_from_a_file_of_self_edits(tiny_model_dir, tmp_path):
    from seal.shared.knowledge import KnowledgeDomain

    heldout = KnowledgeDomain().load("builtin", "heldout[:2]")
    edits = tmp_path / "edits.jsonl"
    edits.write_text("\n".join(json.dumps({"title": p.title, "text": f"{q.question} {q.answer}."})
                               for p in heldout for q in p.questions[:1]) + "\n")
    out = tmp_path / "ev"
    cmd = [a if a != str(REPO / "recipes" / "seal.py") else str(REPO / "recipes" / "evaluate.py")
           for a in args_for(tiny_model_dir, out, "--outer.rounds", "0", "--eval.conditions",
                             "[no_update, context_only, file]", "--eval.self_edits_file", str(edits),
                             "--eval.seeds", "[0, 1]")]
    proc = run(cmd, tmp_path)
    assert "| condition | single-instance acc. % | n | CPT acc. % | n | CPT pooled % |" in proc.stdout
    records = table(out, "eval_records")
    files = [r for r in table(out, "eval_self_edits") if r["condition"] == "file"]
    assert {r["instance"] for r in files} == {p.id for p in heldout}
    single = [r for r in records if r["condition"] == "file" and r["setting"] == "single"]
    assert len(single) == 2 * 2  # instances x seeds
    cpt = [r for r in records if r["condition"] == "file" and r["setting"] == "cpt"]
    assert len(cpt) == 2 * 2
    # every cell keeps each grader's score (the run is graded by `contains`), the trained ones their timing
    for r in (json.loads(line) for line in (out / "eval_records.jsonl").read_text().splitlines()):
        assert set(r["grades"]) == {"contains", "exact_match", "f1"} and r["grades"]["contains"] == r["score"]
        if r["condition"] != "no_update":
            assert r["seconds"]["absorb"] > 0 and r["seconds"]["score"] > 0 and r["train"]["steps"] > 0
    header, *rows = (out / "eval.csv").read_text().splitlines()
    cols = header.split(",")
    file_row = dict(zip(cols, next(r for r in rows if r.startswith("file,")).split(",")))
    mean = sum(r["score"] for r in single) / len(single)
    assert float(file_row["single_mean"]) == pytest.approx(mean) and file_row["single_n"] == "2"  # instances
    assert [r.split(",")[0] for r in rows] == ["no_update", "context_only", "file"]
    baselines = table(out, "baselines")
    proc = run(cmd, tmp_path)  # resumes: nothing recomputed
    assert table(out, "eval_records") == records and table(out, "baselines") == baselines


def test_an_evaluation_over_more_held_out_passages_reuses_their_cells_and_retrains_cpt(tiny_model_dir, tmp_path):
    """The held-out selection may grow between evaluations of one run directory: each passage's cells are
    kept, CPT (one adapter on the whole held-out set) is trained anew, and the tables hold the current
    passages only. Another CPT split (eval.cpt_split) retrains CPT only."""
    out = tmp_path / "ev"

    def evaluate(split, *extra):
        cmd = [a if a != str(REPO / "recipes" / "seal.py") else str(REPO / "recipes" / "evaluate.py")
               for a in args_for(tiny_model_dir, out, "--outer.rounds", "0", "--eval.conditions",
                                 "[no_update, context_only]", "--eval.seeds", "[0]", "--data.eval_split", split,
                                 *extra)]
        run(cmd, tmp_path)
        return table(out, "eval_records")

    two = evaluate("heldout[:2]")
    three = evaluate("heldout[:3]")
    assert three[:len(two)] == two  # nothing of the first evaluation recomputed or lost
    new = three[len(two):]
    assert sum(r["setting"] == "single" for r in new) == 2  # the third passage's no-update and passage-only cells
    assert sum(r["setting"] == "cpt" for r in new) == 3  # CPT trained on the three passages
    rows = {line.split(",")[0]: line.split(",") for line in (out / "eval.csv").read_text().splitlines()[1:]}
    header = (out / "eval.csv").read_text().splitlines()[0].split(",")
    assert rows["context_only"][header.index("single_n")] == "3" and rows["context_only"][header.index("cpt_n")] == "3"
    one = evaluate("heldout[:1]")
    rows = {line.split(",")[0]: line.split(",") for line in (out / "eval.csv").read_text().splitlines()[1:]}
    assert rows["context_only"][header.index("single_n")] == "1"
    new = evaluate("heldout[:1]", "--eval.cpt_split", "segments")[len(one):]
    assert [(r["condition"], r["setting"]) for r in new] == [("context_only", "cpt")]
    current = json.loads((out / "eval_current.json").read_text())
    assert current["instances"] == ["heldout-00000"] and set(current["keys"]) == {"no_update", "context_only"}
    # another CPT setting retrains CPT only (its settings no longer key the single-instance cells)
    before = evaluate("heldout[:1]", "--eval.cpt_split", "segments")
    new = evaluate("heldout[:1]", "--eval.cpt_split", "segments", "--eval.cpt_lr", "0.02")[len(before):]
    assert [(r["condition"], r["setting"]) for r in new] == [("context_only", "cpt")]
    # rows keyed as before the keys were split (one key for every setting) are still read, not measured again
    legacy = json.loads((out / "eval_settings.json").read_text())["legacy_key"]
    rows = [json.loads(line) for line in (out / "eval_records.jsonl").read_text().splitlines()]
    for r in rows:
        r["eval_key"] = legacy + (":" + r["eval_key"].split(":")[1] if r["setting"] == "cpt" else "")
    (out / "eval_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = len(rows)
    assert len(evaluate("heldout[:2]")) == n  # every cell of these two passages, CPT's too, was measured
    # a cell measured under both keys counts once, as its newer row (here: a score no measurement gives)
    key = json.loads((out / "eval_current.json").read_text())["keys"]["context_only"]
    newer = [{**r, "eval_key": key, "score": 1.0} for r in rows if r["condition"] == "context_only"
             and r["setting"] == "single" and r["instance"] in ("heldout-00000", "heldout-00001")]
    (out / "eval_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + newer))
    assert len(evaluate("heldout[:2]")) == n + len(newer) and len(newer) == 2
    rows = {line.split(",")[0]: line.split(",") for line in (out / "eval.csv").read_text().splitlines()[1:]}
    assert rows["context_only"][header.index("single_n")] == "2"
    assert float(rows["context_only"][header.index("single_mean")]) == 1.0


@pytest.mark.slow
def test_a_killed_continual_run_resumes_to_the_same_matrices(tiny_model_dir, tmp_path):
    def continual_args(out):
        return [sys.executable, str(REPO / "recipes" / "continual.py"),
                "--config", str(REPO / "recipes/knowledge/smollm2-135m.yaml"), "--teacher.name", str(tiny_model_dir),
                "--output_dir", str(out), "--threads", "1", "--sampling.max_new_tokens", "24", "--inner.epochs", "3",
                "--continual.passages", "3", "--continual.sequences", "2"]

    ref = tmp_path / "ref"
    run(continual_args(ref), tmp_path)
    expected = json.loads((ref / "continual" / "continual.json").read_text())
    assert expected["complete"] == 2 and len(expected["matrices"][0]) == 4
    assert all(expected["matrices"][n][i][j] is not None for n in range(2) for i in range(4) for j in range(3)
               if i == 0 or j < i)
    out = tmp_path / "killed"
    steps = out / "continual" / "continual_steps.jsonl"
    kill_when(continual_args(out), tmp_path, lambda: steps.exists() and len(steps.read_text().splitlines()) >= 2,
              "two merged steps")
    done_before = len(steps.read_text().splitlines())
    run(continual_args(out), tmp_path)
    assert json.loads((out / "continual" / "continual.json").read_text()) == expected
    rows = [json.loads(line) for line in steps.read_text().splitlines()]
    assert len(rows) == 6 and len({(r["sequence"], r["step"]) for r in rows}) == 6  # no finished step redone
    assert done_before >= 2
    # the steps after the kill ran on recovered weights: the evolving teacher's texts and the training losses
    # (both functions of the merged weights) are those of the uninterrupted run
    reference = [json.loads(line) for line in (ref / "continual" / "continual_steps.jsonl").read_text().splitlines()]
    key = lambda r: (r["sequence"], r["step"])  # noqa: E731
    assert sorted(rows, key=key) == sorted(reference, key=key)


def test_published_self_edit_files_are_rows_of_their_own(tiny_model_dir, tmp_path):
    """`file:NAME=PATH`, several at once: the official repository's JSON ({title, context, completions}) or
    our JSONL; they share the no-update and passage-only cells, and changing one file recomputes only its
    own rows."""
    from seal.shared.knowledge import KnowledgeDomain

    heldout = KnowledgeDomain().load("builtin", "heldout[:2]")

    def official(path, tail):
        path.write_text(json.dumps([{"title": p.title, "context": p.context, "questions": [],
                                     "completions": [f"{p.questions[0].question} {p.questions[0].answer}{tail}",
                                                     "unused second completion"]} for p in heldout]))
        return path

    a, b = official(tmp_path / "a_val.json", "."), official(tmp_path / "b_val.json", "!")
    out = tmp_path / "ev"
    cmd = [x if x != str(REPO / "recipes" / "seal.py") else str(REPO / "recipes" / "evaluate.py")
           for x in args_for(tiny_model_dir, out, "--outer.rounds", "0", "--eval.seeds", "[0]", "--eval.cpt", "false",
                             "--eval.conditions", f"[no_update, context_only, file:paper_a={a}, file:paper_b={b}]")]
    run(cmd, tmp_path)
    header, *rows = (out / "eval.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["no_update", "context_only", "paper_a", "paper_b"]
    edits = table(out, "eval_self_edits")
    assert {(e["condition"], e["index"]) for e in edits} == {("paper_a", 0), ("paper_b", 0)}  # eval.k 1
    assert all(e["text"].endswith(".") for e in edits if e["condition"] == "paper_a")
    before = table(out, "eval_records")
    official(b, "?")  # b changes: its rows are measured afresh, a's and the shared ones are reused
    run(cmd, tmp_path)
    after = table(out, "eval_records")
    new = after[len(before):]
    assert after[:len(before)] == before and new and {r["condition"] for r in new} == {"paper_b"}
    c = tmp_path / "c_val.json"  # a file for one of the two passages: its row holds that one, said in the log
    c.write_text(json.dumps(json.loads(a.read_text())[:1]))
    proc = run([x.replace(f"file:paper_b={b}", f"file:paper_c={c}") for x in cmd], tmp_path)
    assert "evaluation paper_c: self-edits for 1 of the 2 held-out instances" in proc.stderr
    rows = {r.split(",")[0]: r.split(",") for r in (out / "eval.csv").read_text().splitlines()[1:]}
    assert rows["paper_c"][header.split(",").index("single_n")] == "1"
