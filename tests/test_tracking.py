"""wandb logging (offline, read back from the run files), sweep files, and the report command."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from seal.shared.config_parser import parse_config
from tests.conftest import REPO
from tests.wandb_log import history_and_config

SWEEPS = sorted((REPO / "recipes" / "sweeps").glob("*.yaml"))


def run_tiny(model_dir, out, *extra, env=None):
    cmd = [sys.executable, str(REPO / "recipes" / "seal.py"), "--config",
           str(REPO / "recipes/knowledge/smollm2-135m.yaml"), "--teacher.name", str(model_dir),
           "--output_dir", str(out), "--threads", "1", "--data.train_split", "train[:2]",
           "--data.eval_split", "heldout[:2]", "--sampling.max_new_tokens", "24", "--inner.epochs", "2",
           "--eval.cpt", "false", *extra]
    proc = subprocess.run(cmd, cwd=out.parent, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def wandb_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("wb") / "run"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "SEAL_TEST_SECRET": "never-logged"}
    env.pop("WANDB_API_KEY", None)
    # credentials on the command line (a judge URL's user:password and api-key parameter): wandb records the
    # program's arguments, which must not carry them
    run_tiny(tiny_model_dir, out, "--report_to", "wandb", "--wandb.project", "seal-test", "--domain.judge.url",
             "https://user:TOPSECRET@judge.example/v1?api-key=SECRET2&model=m", env=env)
    (run_dir,) = list((out / "wandb").glob("offline-run-*"))
    return out, run_dir


def test_offline_run_has_the_round_keys_and_the_self_edit_table(wandb_run):
    out, run_dir = wandb_run
    (log_file,) = list(run_dir.glob("*.wandb"))
    rows, config = history_and_config(log_file)
    (round_row,) = [r for r in rows if "round/mean_reward" in r]
    for key in ("round", "round/fraction_positive", "round/kept", "round/self_edits", "round/sft_steps",
                "timing/absorb_seconds", "timing/score_seconds", "reward/distribution/_type"):
        assert key in round_row, key
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    means = {}
    for r in records:
        means.setdefault((r["instance"], r["index"]), []).append(r["reward"])
    assert round_row["round/self_edits"] == len(means) == 4
    assert round_row["round/mean_reward"] == pytest.approx(sum(sum(v) / len(v) for v in means.values()) / 4)
    # TRL's trainer logged the teacher SFT loss into the same run
    assert any("train/loss" in r for r in rows)
    assert any("eval/table/_type" in r for r in rows)
    (table_file,) = list((run_dir / "files" / "media" / "table" / "self_edits").glob("round0_*.table.json"))
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["round", "instance", "index", "status", "text", "reward"]
    edits = [json.loads(line) for line in (out / "self_edits.jsonl").read_text().splitlines()]
    assert {row[4] for row in table["data"]} == {e["text"] for e in edits}
    assert config["inner"]["lr"] == pytest.approx(3e-3) and config["wandb"]["project"] == "seal-test"
    assert "never-logged" not in log_file.read_bytes().decode("latin-1")
    for path in [log_file, *run_dir.rglob("*.json"), out / "config.yaml"]:
        text = path.read_bytes().decode("latin-1")
        assert "TOPSECRET" not in text and "SECRET2" not in text, path
    assert "judge.example" in log_file.read_bytes().decode("latin-1")  # the arguments themselves are recorded


def test_report_renders_pngs_from_a_real_run(wandb_run):
    out, _ = wandb_run
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "report.py"), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("reward_by_round.png", "eval_conditions.png", "reward_vs_length.png"):
        data = (out / "report" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    report = (out / "report" / "report.md").read_text()
    assert "![reward_by_round](reward_by_round.png)" in report and "| no_update |" in report


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "recipes" / "report.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a SEAL run directory" in proc.stderr


def sample_value(spec):
    if "values" in spec:
        return spec["values"][-1]
    if "value" in spec:
        return spec["value"]
    return spec["min"]


def agent_argv(sweep, run_id="abc123"):
    """The command line `wandb agent` builds: ${args} becomes --name=value for each sampled parameter."""
    args = [f"--{name}={sample_value(spec)}" for name, spec in sweep["parameters"].items()]
    argv = []
    for part in sweep["command"]:
        if part == "${env}":
            continue
        if part == "${program}":
            argv.append(sweep["program"])
        elif part == "${args}":
            argv += args
        else:
            argv.append(part)
    return argv, args


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_files_are_valid_and_parse_through_our_parser(path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "recipes/seal.py" and (REPO / sweep["program"]).is_file()
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["goal"] in ("maximize", "minimize")
    assert sweep["metric"]["name"].startswith(("round/", "eval/"))
    for name, spec in sweep["parameters"].items():
        assert "values" in spec or {"min", "max"} <= set(spec) or "value" in spec, name
    assert "${args}" in sweep["command"] and "${program}" in sweep["command"]
    argv, args = agent_argv(sweep)
    assert argv[:2] == ["accelerate", "launch"]
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    monkeypatch.chdir(REPO)
    cfg = parse_config(argv[argv.index(sweep["program"]) + 1:])
    assert cfg.report_to == "wandb" and cfg.output_dir == "runs/sweeps/abc123"
    for arg in args:
        dotted, value = arg[2:].split("=", 1)
        section, key = dotted.split(".")
        got = getattr(getattr(cfg, section), key) if section != "domain" else cfg.domain[key]
        assert str(got) == value or got == pytest.approx(float(value)), dotted


def test_a_sweep_run_command_line_runs_the_recipe(tiny_model_dir, tmp_path):
    """The inner-loop sweep's sampled arguments, run for real (tiny model, no accelerate, offline)."""
    sweep = yaml.safe_load((REPO / "recipes/sweeps/inner_loop.yaml").read_text())
    _, args = agent_argv(sweep)
    out = tmp_path / "sweep"
    run_tiny(tiny_model_dir, out, *args, "--outer.rounds", "1", "--eval.enabled", "false",
             env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    saved = yaml.safe_load((out / "config.yaml").read_text())["config"]
    for arg in args:
        dotted, value = arg[2:].split("=", 1)
        section, key = dotted.split(".")
        assert saved[section][key] == pytest.approx(float(value)), dotted
    assert (out / "records.jsonl").exists()


def test_report_reads_the_evaluation_under_every_grader_with_paired_differences_and_a_learning_curve(tmp_path):
    """The study report: per-grader tables from the cells' recorded grades, each condition's per-instance
    difference from a reference, the accuracy by round with its reference lines, what the self-edits
    contain, and the time per phase."""
    import importlib

    import yaml

    from seal.shared.knowledge import KnowledgeDomain
    from seal.shared.records import BaselineRecord, EvalRecord, RoundRecord, SelfEditRecord

    sys.path.insert(0, str(REPO / "recipes"))
    report = importlib.import_module("report")
    heldout = KnowledgeDomain().load("builtin", "heldout[:3]")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"digest": "x", "config": {
        "domain": {"name": "knowledge"}, "data": {"source": "builtin", "train_split": "train[:1]",
                                                  "eval_split": "heldout[:3]"}}}))
    scores = {"no_update": [0, 0, 0], "context_only": [0.5, 0, 0], "base_teacher": [0.5, 0.5, 0],
              "round1_teacher": [1, 0.5, 0.5], "round2_teacher": [1, 1, 0.5]}
    rows = [EvalRecord("round2_teacher", "single", heldout[0].id, 0, 0, 0.0, "ok", eval_key="old")]  # superseded
    for condition, values in scores.items():
        for p, v in zip(heldout, values):
            for seed in (0, 1):  # both seeds the same: the mean over seeds is v
                rows.append(EvalRecord(condition, "single", p.id, 0, seed, v, "ok", eval_key="k",
                                       grades={"contains": v, "exact_match": v / 2, "f1": v / 4},
                                       seconds={"absorb": 30.0, "score": 30.0}))
    (tmp_path / "eval_records.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
    p = heldout[0]
    gold = p.questions[0].answer
    edits = [SelfEditRecord(p.id, 0, f"{gold} is stated here.\nNothing useful.", "ok",
                            items=[f"{gold} is stated here.", "Nothing useful."], condition="round2_teacher")]
    (tmp_path / "eval_self_edits.jsonl").write_text("".join(json.dumps(e.to_json()) + "\n" for e in edits))
    (tmp_path / "self_edits.jsonl").write_text(json.dumps(SelfEditRecord(p.id, 0, "x", "ok", round=0,
                                                                        sample_seconds=30.0).to_json()) + "\n")
    (tmp_path / "rounds.jsonl").write_text(json.dumps(RoundRecord(0, 0.1, 0.5, 1, 1, seconds={"update": 90.0})
                                                      .to_json()) + "\n")
    (tmp_path / "baselines.jsonl").write_text("".join(json.dumps(BaselineRecord("f", q.id, 0.0, seconds=s).to_json())
                                                      + "\n" for q, s in zip(heldout, (12.0, 0.0, 6.0))))

    cells = report.current_cells(tmp_path)
    assert len(cells) == 5 * 3 * 2  # the cell of an earlier evaluation is left out
    table = report.grader_table(cells)
    assert "| round2_teacher | 3 | 83.3 ± 16.7 | 41.7 ± 8.3 | 20.8 ± 4.2 |" in table
    paired = report.paired_table(cells, ["context_only"])
    # round 2 minus passage only, per instance: +0.5, +1, +0.5 -> 66.7 ± 1.96 * 16.7
    assert "| round2_teacher | context_only | contains | 3 | 66.7 ± 32.7 | 3 | 0 |" in paired
    both = report.paired_table(cells, ["context_only", "base_teacher"])
    assert "| base_teacher | context_only | contains | 3 | 16.7 ± 32.7 | 1 | 0 |" in both
    assert "| context_only | base_teacher |" not in both  # the same pair, mirrored, once is enough
    assert "| round2_teacher | base_teacher | contains | 3 | 50.0 ± 0.0 | 3 | 0 |" in both
    assert report.plot_curve(cells, "contains", tmp_path).read_bytes()[:4] == b"\x89PNG"
    edits_table = report.self_edit_table(tmp_path)
    words = len(edits[0].text.split())
    assert f"| round2_teacher (held out) | 1 | 100 | {words} | 2.0 |" in edits_table
    assert edits_table.rstrip().endswith("| 50 |")  # one of its two items states a gold answer
    timing = report.timing_table(tmp_path)
    assert "| evaluation: round1_teacher | 6.0 |" in timing  # 6 cells x 60 s
    assert "| round 0: sampling | 0.5 |\n| round 0: inner loops | 0.0 |\n| round 0: teacher update | 1.5 |" in timing
    assert "| no-update baselines (every student, 3 instances) | 0.3 |" in timing


def test_report_reads_what_the_store_reads_scores_the_oracle_as_the_table_and_keeps_legacy_rows(tmp_path):
    """Three ways the report disagreed with the evaluation: a self-edit holding U+2028 (stored unescaped,
    and str.splitlines splits on it) broke the report; the oracle was averaged over its self-edits where
    eval.md takes the best; rows made before evaluation keys existed dropped out of its tables."""
    from seal.shared.records import EvalRecord, SelfEditRecord
    from seal.shared.store import RunStore
    from seal.teacher.records import table_rows
    from tests.conftest import import_recipe

    report = import_recipe("report")
    store = RunStore(tmp_path, {"seed": 0})
    store.append("eval_self_edits", SelfEditRecord("p", 0, "line one\u2028line two", "ok", items=["x"],
                                                   condition="base_teacher"))
    assert [e.text for e in report.read(tmp_path, "eval_self_edits", SelfEditRecord)] == ["line one\u2028line two"]

    (tmp_path / "eval_settings.json").write_text(json.dumps({"legacy_key": "old", "settings": {}}))
    cells = [EvalRecord("oracle", "single", "p", j, 0, score, "ok", eval_key="k") for j, score in enumerate((0, 1))]
    cells += [EvalRecord("no_update", "single", "p", None, None, 0.0, "ok")]  # before eval keys: legacy "old"
    store.append_many("eval_records", cells)
    (tmp_path / "eval_current.json").write_text(json.dumps({"keys": {"oracle": "k", "no_update": "old"},
                                                            "instances": ["p"]}))
    current = report.current_cells(tmp_path)
    assert {c.condition for c in current} == {"oracle", "no_update"}
    (oracle,) = table_rows(cells, ["oracle"], cpt=False)
    assert report.per_instance(current, "score")["oracle"]["p"] == oracle["single_mean"] == 1.0


def test_a_run_that_fails_is_marked_failed_in_wandb(tiny_model_dir, tmp_path):
    """The tracker was always finished with exit code 0, so a run stopped by an error looked finished."""
    from tests.wandb_log import exit_code

    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "recipes" / "seal.py"), "--config",
           str(REPO / "recipes/knowledge/smollm2-135m.yaml"), "--teacher.name", str(tiny_model_dir),
           "--output_dir", str(out), "--report_to", "wandb",
           "--data.source", str(tmp_path / "missing.json")]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "error: " in proc.stderr, proc.stderr[-2000:]
    (log_file,) = list((out / "wandb").glob("offline-run-*/*.wandb"))
    assert exit_code(log_file) == 2


def test_a_long_single_step_is_never_silent_and_a_short_one_says_nothing(caplog):
    """Loading or saving a model has no count to report and the hub's own bars are off: a step that lasts
    longer than `every` seconds gets a line while it runs and one when it ends; a quick one stays quiet."""
    import logging
    import threading

    from seal.shared.tracking import heartbeat

    beaten = threading.Event()

    class Beats(logging.Handler):
        def emit(self, record):
            if "so far" in record.getMessage():
                beaten.set()

    logging.getLogger("seal").addHandler(handler := Beats())
    try:
        with caplog.at_level("INFO", logger="seal"):
            with heartbeat("loading quick"):
                pass
            with heartbeat("loading slow", every=0.01):
                assert beaten.wait(60)  # the step lasts until the heartbeat has spoken
    finally:
        logging.getLogger("seal").removeHandler(handler)
    quick = [r.message for r in caplog.records if "quick" in r.message]
    slow = [r.message for r in caplog.records if "slow" in r.message]
    assert quick == [] and any("so far" in m for m in slow) and slow[-1].startswith("loading slow: done in")


def test_wandb_stays_online_with_a_login_or_in_a_sweep(tmp_path, monkeypatch):
    """Only WANDB_API_KEY counted: a user logged in through ~/.netrc, or a sweep agent's child (which does
    not set the key), was switched to offline without a word and the sweep never saw its metrics."""
    from seal.shared.tracking import _goes_offline, _wandb_credentials

    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_SWEEP_ID"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not _wandb_credentials() and _goes_offline()  # no file
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    assert not _goes_offline()
    monkeypatch.delenv("WANDB_SWEEP_ID")
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    assert _wandb_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not _wandb_credentials()  # another host's key


def test_a_damaged_table_is_one_error_line_in_the_report(tmp_path):
    from tests.conftest import import_recipe

    report = import_recipe("report")
    (tmp_path / "config.yaml").write_text("digest: x\nconfig: {}\n")
    (tmp_path / "records.jsonl").write_text('{"round": 0\n')  # a complete line that is not a record
    assert report.main([str(tmp_path)]) == 2
