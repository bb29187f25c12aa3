import pytest

from seal.shared.store import RunDirError, RunStore


def test_append_and_read_skip_a_torn_last_line(tmp_path):
    store = RunStore(tmp_path / "run", {"seed": 0})
    store.append("records", {"a": 1, "x": float("nan")})
    store.append("records", {"a": 2})
    with open(tmp_path / "run" / "records.jsonl", "ab") as fh:
        fh.write(b'{"a": 3, "trunc')  # what a SIGKILL mid-write leaves
    assert store.read("records") == [{"a": 1, "x": None}, {"a": 2}]
    assert store.read("missing") == []


def test_a_run_dir_refuses_another_config(tmp_path):
    RunStore(tmp_path, {"seed": 0, "inner": {"lr": 1e-3}, "output_dir": "a"})
    RunStore(tmp_path, {"seed": 0, "inner": {"lr": 1e-3}, "output_dir": "b", "threads": 4})  # same results
    RunStore(tmp_path, {"seed": 0, "inner": {"lr": 1e-3}, "eval": {"conditions": ["file"]}})  # more evaluation
    with pytest.raises(RunDirError, match=r"inner.lr: 0.001 -> 0.003"):
        RunStore(tmp_path, {"seed": 0, "inner": {"lr": 3e-3}, "output_dir": "a"})


def test_saved_config_is_redacted(tmp_path):
    RunStore(tmp_path, {"judge": {"api_key": "sk-secret"}})
    text = (tmp_path / "config.yaml").read_text()
    assert "sk-secret" not in text and "<redacted>" in text


def test_appending_after_a_torn_line_cuts_it_and_ranks_have_their_own_files(tmp_path):
    store = RunStore(tmp_path, {"seed": 0})
    store.append("records", {"a": 1})
    with open(tmp_path / "records.jsonl", "ab") as fh:
        fh.write(b'{"a": 2, "tor')
    resumed = RunStore(tmp_path, {"seed": 0})
    resumed.append("records", {"a": 3})
    assert resumed.read("records") == [{"a": 1}, {"a": 3}]
    other = RunStore(tmp_path, {"seed": 0}, rank=1)
    other.append("records", {"a": 4})
    assert (tmp_path / "records.rank1.jsonl").exists()
    assert store.read("records") == [{"a": 1}, {"a": 3}, {"a": 4}]
