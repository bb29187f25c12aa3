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
    with pytest.raises(RunDirError, match=r"inner.lr: 0.001 -> 0.003"):
        RunStore(tmp_path, {"seed": 0, "inner": {"lr": 3e-3}, "output_dir": "a"})


def test_saved_config_is_redacted(tmp_path):
    RunStore(tmp_path, {"judge": {"api_key": "sk-secret"}})
    text = (tmp_path / "config.yaml").read_text()
    assert "sk-secret" not in text and "<redacted>" in text
