import pytest

from seal.shared.config import ConfigError, SealConfig, parse_config, redacted, to_dict


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_yaml_then_overrides_in_both_cli_forms(tmp_path):
    path = write(tmp_path, "inner:\n  lr: 1e-3\n  epochs: 4\nsampling:\n  k: 3\n")
    cfg = parse_config(["--config", path, "--inner.lr", "3e-4", "--sampling.k=7", "--inner.seeds", "[1, 2]"])
    assert isinstance(cfg, SealConfig)
    assert cfg.inner.lr == pytest.approx(3e-4)
    assert cfg.inner.epochs == 4
    assert cfg.sampling.k == 7
    assert cfg.inner.seeds == [1, 2]


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # YAML 1.1 reads `1e-3` as a string; the parser must still give a float.
    cfg = parse_config(["--config", write(tmp_path, "inner:\n  lr: 1e-3\n")])
    assert cfg.inner.lr == pytest.approx(1e-3)


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key in section 'inner': learning_rate"):
        parse_config(["--config", write(tmp_path, "inner:\n  learning_rate: 0.1\n")])
    with pytest.raises(ConfigError, match="unknown config key: bogus"):
        parse_config(["--bogus", "1"])


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="inner.epochs: expected an integer"):
        parse_config(["--inner.epochs", "ten"])
    with pytest.raises(ConfigError, match="sampling.temperature: expected a number"):
        parse_config(["--sampling.temperature", "hot"])
    with pytest.raises(ConfigError, match="teacher.chat_template: expected true/false"):
        parse_config(["--teacher.chat_template", "maybe"])


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(["--config", write(tmp_path, "inner: [unclosed\n")])
    with pytest.raises(ConfigError, match="mapping at the top level"):
        parse_config(["--config", write(tmp_path, "- 1\n- 2\n")])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_config(["--inner.lr"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_config(["positional"])
    with pytest.raises(ConfigError, match="is not a section"):
        parse_config(["--seed", "1", "--seed.x", "2"])


def test_mode_rules():
    with pytest.raises(ConfigError, match="needs a `student:` section"):
        parse_config(["--mode", "teacher_student"])
    with pytest.raises(ConfigError, match="mode self uses the teacher"):
        parse_config(["--student.name", "x"])
    with pytest.raises(ConfigError, match="expected 'self' or 'teacher_student'"):
        parse_config(["--mode", "other"])
    cfg = parse_config(["--mode", "teacher_student", "--student.name", "/m"])
    assert cfg.student.name == "/m" and cfg.student.dtype == "float32"


def test_redaction_hides_secrets_but_not_token_counts():
    data = {"judge": {"api_key": "sk-123", "url": "http://x"}, "wandb_key": "abc",
            "sampling": {"max_new_tokens": 64}, "token": ""}
    out = redacted(data)
    assert out["judge"]["api_key"] == "<redacted>" and out["wandb_key"] == "<redacted>"
    assert out["judge"]["url"] == "http://x"
    assert out["sampling"]["max_new_tokens"] == 64
    assert "sk-123" not in str(out)


def test_a_partitioned_student_is_only_a_fixed_one_scored_by_transformers():
    with pytest.raises(ConfigError, match="inner.deepspeed partitions a fixed student: it needs mode teacher_student"):
        parse_config(["--inner.deepspeed", "true"])
    with pytest.raises(ConfigError, match="cannot be combined with inner.score_backend: vllm"):
        parse_config(["--mode", "teacher_student", "--student.name", "/m", "--inner.deepspeed", "true",
                      "--inner.score_backend", "vllm"])
    cfg = parse_config(["--mode", "teacher_student", "--student.name", "/m", "--inner.deepspeed", "true"])
    assert cfg.inner.deepspeed is True


def test_repo_recipes_parse():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("recipes/knowledge/*.yaml")):
        cfg = parse_config(["--config", str(path)])
        assert to_dict(cfg)["domain"]["name"] == "knowledge", path
