import pytest
import yaml

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
    RunStore(tmp_path, {"seed": 0, "inner": {"lr": 1e-3}, "output_dir": "a"}).append("records", {"a": 1})
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


# ---------------------------------------------------------------- damage


def test_a_full_disk_leaves_whole_lines_and_says_so(tmp_path, monkeypatch):
    """A writer that returns short counts (what a full disk does) never leaves a fragment that the next
    record would be glued onto; once space returns, appending and reading work."""
    import os

    store = RunStore(tmp_path, {"seed": 0})
    store.append("records", {"a": 1})
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:5]) if len(data) > 5 else 0)
    with pytest.raises(RunDirError, match="cannot append to .*records.jsonl .*free space and run the same command"):
        store.append("records", {"a": 2, "long": "x" * 100})
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "records.jsonl").read_bytes() == b'{"a": 1}\n'
    store.append("records", {"a": 3})
    assert store.read("records") == [{"a": 1}, {"a": 3}]


def test_a_write_error_is_a_run_dir_error(tmp_path, monkeypatch):
    import os

    store = RunStore(tmp_path, {"seed": 0})

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(RunDirError, match="cannot write .*records.jsonl: Permission denied"):
        store.append("records", {"a": 1})


def test_a_garbage_line_names_its_file_and_line(tmp_path):
    store = RunStore(tmp_path, {"seed": 0})
    store.append("records", {"a": 1})
    with open(tmp_path / "records.jsonl", "ab") as fh:
        fh.write(b"garbage\n")
    with pytest.raises(RunDirError, match=r"records.jsonl:2 is not a JSON record"):
        store.read("records")


def test_deleting_config_yaml_does_not_disable_the_guard(tmp_path):
    store = RunStore(tmp_path, {"seed": 0, "inner": {"lr": 1e-3}})
    store.append("records", {"a": 1})
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(RunDirError, match="holds results .* but no config.yaml"):
        RunStore(tmp_path, {"seed": 0, "inner": {"lr": 5e-3}})
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("text", ["{{{ not yaml", "- a list\n", "digest_missing: 1\n"])
def test_a_damaged_config_yaml_is_a_clear_error(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    (tmp_path / "records.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(RunDirError, match="config.yaml"):
        RunStore(tmp_path, {"seed": 0})


def test_an_unwritable_run_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match="cannot create the run directory"):
        RunStore(blocker / "run", {"seed": 0})


def test_secrets_in_a_judge_url_are_redacted(tmp_path):
    url = "https://user:pw123@judge.example/v1?api_key=sk-abc&model=x"
    RunStore(tmp_path, {"domain": {"judge": {"url": url}}})
    text = (tmp_path / "config.yaml").read_text()
    assert "sk-abc" not in text and "pw123" not in text and "model=x" in text


def test_stale_teacher_scratch_folders_are_removed_when_a_run_starts(tmp_path):
    from seal.teacher.checkpoints import remove_stale_staging

    store = RunStore(tmp_path, {"seed": 0})
    stale = tmp_path / "teachers" / ".round1-abc123"
    stale.mkdir(parents=True)
    (tmp_path / "teachers" / "round1").mkdir()
    remove_stale_staging(store)
    assert not stale.exists() and (tmp_path / "teachers" / "round1").exists()


def test_a_directory_without_results_takes_the_new_config(tmp_path):
    """A run that stopped before its first result (e.g. a model path typo) does not own the directory."""
    RunStore(tmp_path, {"seed": 0, "teacher": {"name": "typo"}})
    RunStore(tmp_path, {"seed": 0, "teacher": {"name": "right"}}).append("records", {"a": 1})
    assert "right" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(RunDirError, match="different config"):
        RunStore(tmp_path, {"seed": 0, "teacher": {"name": "typo"}})


def test_a_run_made_before_a_key_existed_still_resumes(tmp_path):
    """Keys added later (ADDED_KEYS) at their default leave the digest as it was."""
    from seal.shared.config import SealConfig
    from seal.shared.config_parser import to_dict
    from seal.shared.store import ADDED_KEYS

    new = to_dict(SealConfig())
    old = to_dict(SealConfig())
    for dotted in ADDED_KEYS:
        *parents, leaf = dotted.split(".")
        node = old
        for part in parents:
            node = node[part]
        node.pop(leaf)
    RunStore(tmp_path, old).append("records", {"a": 1})
    RunStore(tmp_path, new)  # resumes
    changed = to_dict(SealConfig())
    changed["sampling"]["served"]["model"] = "other"
    with pytest.raises(RunDirError):
        RunStore(tmp_path, changed)


def test_a_served_teacher_may_move_to_another_port_but_not_another_model(tmp_path):
    from seal.shared.config import SealConfig
    from seal.shared.config_parser import to_dict

    cfg = to_dict(SealConfig())
    cfg["sampling"]["served"].update(url="http://a:8000/v1", model="m")
    RunStore(tmp_path, cfg).append("records", {"a": 1})
    cfg["sampling"]["served"].update(url="http://b:9000/v1", timeout_s=5.0, concurrency=2)
    RunStore(tmp_path, cfg)
    cfg["sampling"]["served"]["model"] = "other"
    with pytest.raises(RunDirError, match="sampling.served.model"):
        RunStore(tmp_path, cfg)


def test_a_chunk_of_records_is_one_write(tmp_path, monkeypatch):
    """A kill cannot keep part of a chunk: its records go to the table in a single write."""
    import os

    store = RunStore(tmp_path, {"seed": 0})
    store.append("records", {"a": 0})
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    store.append_many("records", [{"a": 1}, {"a": 2}, {"a": 3}])
    assert len(writes) == 1 and writes[0].count(b"\n") == 3
    assert store.read("records") == [{"a": i} for i in range(4)]


def test_memory_settings_can_change_on_resume_and_old_arc_runs_are_refused(tmp_path):
    """A run that ran out of memory resumes with smaller passes (the same steps); an ARC run made before
    the official augmentation families is refused rather than mixing two test-time-training sets."""
    import hashlib
    import json

    from seal.shared.config_parser import parse_config, to_dict
    from seal.shared.store import RunDirError, config_digest

    store = RunStore(tmp_path / "r", to_dict(parse_config(["--inner.max_row_tokens", "4096"])))
    store.append("records", {"x": 1})
    RunStore(tmp_path / "r", to_dict(parse_config(["--inner.max_row_tokens", "1024", "--inner.gradient_checkpointing",
                                                   "true", "--inner.score_batch_tokens", "4096"])))
    # more held-out passages later: the evaluation's cells are keyed by instance, none is reused wrongly
    RunStore(tmp_path / "r", to_dict(parse_config(["--data.eval_split", "heldout[:8]", "--data.eval_limit", "4",
                                                   "--data.eval_shuffle_seed", "1"])))
    # ... but not where the held-out articles decide the training set
    disjoint = to_dict(parse_config(["--data.disjoint_articles", "true"]))
    RunStore(tmp_path / "d", disjoint).append("records", {"x": 1})
    with pytest.raises(RunDirError, match="data.eval_limit"):
        RunStore(tmp_path / "d", to_dict(parse_config(["--data.disjoint_articles", "true", "--data.eval_limit", "3"])))
    # a run made while the held-out selection was a result key resumes, and is marked anew
    old_style = to_dict(parse_config(["--data.eval_split", "heldout[:2]"]))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump({"digest": config_digest(old_style, legacy=2),
                                                                 "config": old_style}))
    (tmp_path / "old" / "records.jsonl").write_text("{}\n")
    assert config_digest(old_style, legacy=2) != config_digest(old_style)
    RunStore(tmp_path / "old", old_style)
    assert yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())["digest"] == config_digest(old_style)
    with pytest.raises(RunDirError, match="data.train_split"):  # the training data is a result key
        RunStore(tmp_path / "r", to_dict(parse_config(["--data.train_split", "train[:1]"])))
    with pytest.raises(RunDirError, match="inner.lr"):  # what does change results still counts
        RunStore(tmp_path / "r", to_dict(parse_config(["--inner.lr", "0.5"])))
    arc = {"domain": {"name": "arc"}}
    old_digest = hashlib.sha256(json.dumps(arc, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert config_digest(arc) != old_digest
    old = tmp_path / "arc"
    old.mkdir()
    (old / "config.yaml").write_text(f"digest: {old_digest}\nconfig: {json.dumps(arc)}\n")
    (old / "records.jsonl").write_text("{}\n")
    with pytest.raises(RunDirError, match="meaning changed since it was made"):
        RunStore(old, arc)


def test_the_judges_connection_is_not_a_result_key(tmp_path):
    """Another port, timeout or cache for the LLM judge refused to resume a run, as sampling.served's do
    not; the judge's model still counts. A run directory made while they counted resumes and is marked anew."""
    from seal.shared.config_parser import parse_config, to_dict
    from seal.shared.store import RunDirError, config_digest

    def config(*args):
        return to_dict(parse_config(["--domain.judge.url", "http://localhost:8000/v1", *args]))

    RunStore(tmp_path / "r", config()).append("records", {"x": 1})
    RunStore(tmp_path / "r", config("--domain.judge.url", "http://localhost:9000/v1", "--domain.judge.timeout_s",
                                    "60", "--domain.judge.retries", "8", "--domain.judge.cache", str(tmp_path / "v")))
    with pytest.raises(RunDirError, match="domain.judge.model"):
        RunStore(tmp_path / "r", config("--domain.judge.model", "gpt-4o"))
    before = config("--domain.judge.timeout_s", "5")
    assert config_digest(before, legacy=1) != config_digest(before)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump({"digest": config_digest(before, legacy=1),
                                                                 "config": before}))
    (tmp_path / "old" / "records.jsonl").write_text("{}\n")
    RunStore(tmp_path / "old", before)
    assert yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())["digest"] == config_digest(before)
    # ... also when the connection has changed since: the case the change is for
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump({"digest": config_digest(before, legacy=1),
                                                                 "config": before}))
    moved = config("--domain.judge.url", "http://localhost:9000/v1", "--domain.judge.timeout_s", "9")
    RunStore(tmp_path / "old", moved)
    assert yaml.safe_load((tmp_path / "old" / "config.yaml").read_text())["digest"] == config_digest(moved)
    # a marker whose own config does not give its digest (made under a rule that changed) is still refused
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump({"digest": "0123456789abcdef", "config": before}))
    with pytest.raises(RunDirError, match="a setting whose meaning changed"):
        RunStore(tmp_path / "old", moved)
