import dataclasses
import typing
from pathlib import Path

import pytest

from seal.shared.config import ALGORITHM_KEYS, ConfigError, OuterConfig, SealConfig
from seal.shared.config_parser import _optional_inner, field_docs, parse_config, redacted, to_dict

REPO = Path(__file__).resolve().parents[1]


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


def test_a_vllm_teacher_and_a_vllm_scorer_would_need_two_sleep_mode_engines_and_are_refused():
    """vLLM allows one sleep-mode engine per process (vllm/v1/worker/gpu_worker.py), and both backends
    keep theirs asleep through the run."""
    with pytest.raises(ConfigError, match="one sleep-mode engine per process"):
        parse_config(["--sampling.backend", "vllm", "--inner.score_backend", "vllm"])
    assert parse_config(["--sampling.backend", "vllm"]).inner.score_backend == "hf"
    assert parse_config(["--inner.score_backend", "vllm"]).sampling.backend == "hf"


def test_a_partitioned_student_is_only_a_fixed_one_scored_by_transformers():
    with pytest.raises(ConfigError, match="inner.deepspeed partitions a fixed student: it needs mode teacher_student"):
        parse_config(["--inner.deepspeed", "true"])
    with pytest.raises(ConfigError, match="cannot be combined with inner.score_backend: vllm"):
        parse_config(["--mode", "teacher_student", "--student.name", "/m", "--inner.deepspeed", "true",
                      "--inner.score_backend", "vllm"])
    cfg = parse_config(["--mode", "teacher_student", "--student.name", "/m", "--inner.deepspeed", "true"])
    assert cfg.inner.deepspeed is True


RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml")
                 if not {"accelerate", "sweeps"} & set(p.relative_to(REPO / "recipes").parts))


def test_recipe_list_covers_both_domains():
    folders = {p.parent.name for p in RECIPES}
    assert {"knowledge", "arc"} <= folders, RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_repo_recipes_parse(path):
    cfg = parse_config(["--config", str(path)])
    folder = path.parent.name
    if folder in ("knowledge", "arc"):
        assert to_dict(cfg)["domain"]["name"] == folder, path


def leaf_keys(cls, prefix=""):
    """Every dotted key of a config dataclass, nested dataclasses (optional or not) expanded."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        inner, _ = _optional_inner(hints[f.name])
        if isinstance(inner, type) and dataclasses.is_dataclass(inner):
            keys += leaf_keys(inner, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def help_output(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def entry(text, key):
    """The help's line for `key` and the docstring lines under it."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}: "))
    indent = len(lines[i]) - len(lines[i].lstrip())
    doc = []
    for line in lines[i + 1:]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        doc.append(line.strip())
    return lines[i].strip(), " ".join(doc)


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--config", "missing.yaml", "--inner.lr", "1", "--help"]])
def test_help_exits_zero_and_lists_every_key(capsys, argv):
    text = help_output(capsys, argv)
    assert text.startswith("usage: python recipes/seal.py --config FILE.yaml [--section.key VALUE ...]")
    assert "--inner.lr=3e-4" in text and "YAML" in text
    keys = leaf_keys(SealConfig)
    assert len(keys) > 60 and "student.name" in keys and "wandb.project" in keys
    listed = {line.strip().split(":")[0] for line in text.splitlines() if ": " in line}
    assert [k for k in keys if k not in listed] == []
    assert max(len(line) for line in text.splitlines()) <= 100


def test_help_shows_types_defaults_and_docstrings(capsys):
    text = help_output(capsys, ["--help"])
    assert entry(text, "inner.lr")[0] == "inner.lr: float (> 0) = 0.001"
    head, doc = entry(text, "inner.max_length")
    assert head == "inner.max_length: int (>= 2) = 512" and "truncated to this many tokens" in doc
    head, doc = entry(text, "eval.temperature")
    assert head == "eval.temperature: float (> 0) | None = null" and "None: sampling.temperature" in doc
    assert entry(text, "inner.seeds")[0] == "inner.seeds: list[int] (non-empty, no repeats) = [0, 1, 2]"
    assert entry(text, "sampling.vllm")[0] == "sampling.vllm: dict = {}"
    head, doc = entry(text, "outer.filter")
    assert head == "outer.filter: str = best_of_k" and doc.startswith("ReST-EM only.")
    assert entry(text, "outer.grpo_beta")[1].startswith("GRPO only.")
    head, doc = entry(text, "student.name")
    assert head == "student.name: str = embedded" and "Hugging Face name" in doc
    assert "student: optional section (default: null" in text
    # The domain is a free mapping; the built-in domains' options are listed under it.
    assert entry(text, "domain")[0] == "domain: dict = {name: knowledge}"
    assert "Options of domain.name: knowledge" in text and "Options of domain.name: arc" in text
    assert entry(text, "domain.format")[0] == "domain.format: str = implications"
    assert entry(text, "domain.judge.url")[0] == "domain.judge.url: str | None = null"
    assert entry(text, "domain.max_grid_size")[0].startswith("domain.max_grid_size: int = ")


def test_every_config_field_has_a_docstring():
    def walk(cls):
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        missing = [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if not docs.get(f.name)]
        for f in dataclasses.fields(cls):
            inner, _ = _optional_inner(hints[f.name])
            if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                missing += walk(inner)
        return missing

    assert sorted(set(walk(SealConfig))) == []


def test_algorithm_specific_keys_are_refused_for_the_other_algorithm(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(["--outer.algorithm", "grpo", "--outer.filter", "all_positive"])
    assert str(err.value) == "outer.filter applies to outer.algorithm rest_em only; remove it (outer.algorithm is grpo)"
    with pytest.raises(ConfigError, match=r"^outer.grpo_steps, outer.grpo_beta apply to outer.algorithm grpo only; "
                                          r"remove them \(outer.algorithm is rest_em\)$"):
        parse_config(["--outer.grpo_steps", "3", "--outer.grpo_beta", "0.1"])
    # Keys in the YAML count as given, whichever side names the algorithm.
    path = write(tmp_path, "outer:\n  algorithm: grpo\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="outer.epochs applies to outer.algorithm rest_em only"):
        parse_config(["--config", path])
    path = write(tmp_path, "outer:\n  epochs: 3\n  lr_scheduler: cosine\n")
    with pytest.raises(ConfigError, match="outer.epochs, outer.lr_scheduler apply to outer.algorithm rest_em only"):
        parse_config(["--config", path, "--outer.algorithm", "grpo"])
    for algorithm, keys in ALGORITHM_KEYS.items():
        other = next(a for a in ALGORITHM_KEYS if a != algorithm)
        for key in keys:
            value = getattr(OuterConfig(), key)
            with pytest.raises(ConfigError, match=f"outer.{key} applies to outer.algorithm {algorithm} only"):
                parse_config(["--outer.algorithm", other, f"--outer.{key}={value}"])
            cfg = parse_config(["--outer.algorithm", algorithm, f"--outer.{key}={value}"])
            assert cfg.outer.algorithm == algorithm


def test_algorithm_key_groups_match_the_schema():
    names = {f.name for f in dataclasses.fields(OuterConfig)}
    assert set(ALGORITHM_KEYS) == {"rest_em", "grpo"}
    assert set(ALGORITHM_KEYS["rest_em"]) == {"filter", "top_fraction", "epochs", "batch_size", "grad_accum",
                                              "max_length", "lr_scheduler"}
    assert set(ALGORITHM_KEYS["grpo"]) == {"grpo_steps", "grpo_prompts_per_step", "grpo_beta"}
    assert set(ALGORITHM_KEYS["rest_em"]) | set(ALGORITHM_KEYS["grpo"]) <= names


def test_defaults_never_count_as_given():
    # Every key keeps its default here, algorithm-specific ones included, for either algorithm.
    assert parse_config([]).outer.algorithm == "rest_em"
    cfg = parse_config(["--outer.algorithm", "grpo", "--outer.lr", "1e-4", "--outer.rounds", "2"])
    assert cfg.outer.algorithm == "grpo" and cfg.outer.filter == "best_of_k" and cfg.outer.epochs == 2.0
    cfg = parse_config(["--outer.algorithm", "rest_em", "--outer.lora_r", "8"])
    assert cfg.outer.grpo_steps == 4


def test_secrets_in_urls_and_command_lines_are_masked():
    from seal.shared.config_parser import redacted_argv

    urls = {"https://user:pw@ss@host/v1": "https://<redacted>@host/v1",  # a password holding "@"
            "https://ghp_TOKEN@github.com/x": "https://<redacted>@github.com/x",  # a token as the user name
            "http://h/v1?api-key=A&x-api-key=B&access-token=C&model=m":
                "http://h/v1?api-key=<redacted>&x-api-key=<redacted>&access-token=<redacted>&model=m",
            "http://h/v1?api_key=A&sig=B": "http://h/v1?api_key=<redacted>&sig=<redacted>"}
    for url, masked in urls.items():
        assert redacted({"url": url}) == {"url": masked}
    argv = ["--domain.judge.url", "https://u:pw@h/v1", "--x.api_key", "sk-1", "--y.token=sk-2",
            "--domain.judge.api_key_env", "JUDGE_KEY", "--sampling.max_new_tokens", "64"]
    assert redacted_argv(argv) == ["--domain.judge.url", "https://<redacted>@h/v1", "--x.api_key", "<redacted>",
                                   "--y.token=<redacted>", "--domain.judge.api_key_env", "JUDGE_KEY",
                                   "--sampling.max_new_tokens", "64"]


def test_a_string_field_takes_the_text_as_typed(tmp_path):
    """Values are read as YAML, so `--teacher.revision 0123456` became the octal number 42798 and then the
    string "42798" (another revision, loaded without a word), `1.10` became "1.1" and `--wandb.group off`
    was refused as False. On the command line a string field now takes the text as typed; in a YAML file
    an unquoted number or yes/no for a string field is refused with the reason."""
    import yaml

    cfg = parse_config(["--teacher.revision", "0123456", "--wandb.group", "off", "--wandb.name=1.10",
                        "--inner.lr", "1e-3", "--eval.seeds", "0", "--seed", "-1", "--domain.answer_max_new_tokens",
                        "64", "--sampling.vllm.enforce_eager", "true"])
    assert (cfg.teacher.revision, cfg.wandb.group, cfg.wandb.name) == ("0123456", "off", "1.10")
    assert (cfg.inner.lr, cfg.eval.seeds, cfg.seed) == (1e-3, [0], -1)
    assert cfg.domain == {"name": "knowledge", "answer_max_new_tokens": 64}  # the default domain's option
    assert cfg.sampling.vllm == {"enforce_eager": True}
    yaml.safe_dump(to_dict(cfg))  # plain values throughout (config.yaml is written from them)
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  revision: 0123456\n")
    with pytest.raises(ConfigError, match=r"teacher.revision: expected a string, got 42798: .*quote it"):
        parse_config(["--config", str(path)])
    path.write_text("teacher:\n  revision: '0123456'\n")
    assert parse_config(["--config", str(path)]).teacher.revision == "0123456"


def test_a_single_value_for_a_list_of_strings_is_its_text():
    cfg = parse_config(["--wandb.tags", "2024", "--inner.seeds", "0"])
    assert (cfg.wandb.tags, cfg.inner.seeds) == (["2024"], [0])
    with pytest.raises(ConfigError, match=r"""wandb.tags\[0\]: expected a string, got 2024: .*"'0123'\""""):
        parse_config(["--wandb.tags", "[2024, x]"])
