"""Stopping a run: Ctrl-C and SIGTERM end it with one line, and random SIGKILLs never change its results."""

import os
import random
import signal
import subprocess
import time

import pytest

from tests.test_outer import args_for, run, table, weights

TABLES = ("self_edits", "records", "baselines", "rounds", "eval_self_edits", "eval_records")


def wait_for(condition, proc, what, deadline_s=300):
    end = time.monotonic() + deadline_s
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_run_says_how_to_resume_in_one_line(tiny_model_dir, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(args_for(tiny_model_dir, out, "--eval.enabled", "false"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (out / "self_edits.jsonl").exists(), proc, "the first self-edit")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("stopped: finished work is kept in ") and "run the same command" in lines[-1]
    assert (out / "self_edits.jsonl").read_text().strip()  # what finished is still there


def chaos_kills() -> int:
    return int(os.environ.get("SEAL_CHAOS_KILLS", "3"))


@pytest.mark.slow
def test_random_kills_and_restarts_reach_the_uninterrupted_results(tiny_model_dir, tmp_path):
    """SIGKILL at random moments (SEAL_CHAOS_KILLS of them, default 3), restart with the same command
    until it finishes, then compare every table, eval.md and the teacher's weights with a run that was
    never interrupted."""
    extra = ["--eval.cpt", "true", "--outer.epochs", "4"]
    ref = tmp_path / "ref"
    started = time.monotonic()
    run(args_for(tiny_model_dir, ref, *extra), tmp_path)
    duration = time.monotonic() - started
    out = tmp_path / "chaos"
    rng = random.Random(int(os.environ.get("SEAL_CHAOS_SEED", "0")))
    kills = 0
    for _ in range(chaos_kills()):
        proc = subprocess.Popen(args_for(tiny_model_dir, out, *extra), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(3.0, max(4.0, duration)))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    run(args_for(tiny_model_dir, out, *extra), tmp_path)  # the last restart runs to the end
    for name in TABLES:
        ours = sorted(map(str, table(out, name)))
        assert ours == sorted(map(str, table(ref, name))), name  # `table` drops timings (VOLATILE)
    assert (out / "eval.md").read_text() == (ref / "eval.md").read_text()
    for key, tensor in weights(ref / "teachers" / "round1").items():
        assert weights(out / "teachers" / "round1")[key].equal(tensor), key
    print(f"chaos: {kills} kills, {sum(len(table(out, n)) for n in TABLES)} rows compared, 0 mismatches")
