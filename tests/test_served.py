"""The served teacher (sampling.backend openai, evaluation condition `served`) against a small OpenAI-compatible
server on loopback, started by the test."""

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from seal.shared.config import ConfigError, SamplingConfig, ServedConfig
from seal.shared.config_parser import parse_config, to_dict
from seal.shared.knowledge import KnowledgeDomain
from seal.shared.store import RunStore
from seal.teacher.sampling import derive_seed
from seal.teacher.served import ServedTeacher, ServedTeacherError
from tests.conftest import loopback
from tests.test_outer import args_for

SECRET = "sk-seal-test-SECRET-4711"
KEY_ENV = "SEAL_TEST_SERVED_KEY"


class Fake:
    """What the server saw and what it will do: `script` holds the answers to the next requests (an HTTP
    status, 'hang' to never answer in time, 'garbage' for a 200 without choices), then every request succeeds."""

    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        self.delay = 0.0
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()


STATE = Fake()


def self_edit(body: dict) -> str:
    """A usable self-QA self-edit that names the request's seed, so each sample's text is its own."""
    seed = body.get("seed", "none")
    return f"Question: Which sample is this one?\nAnswer: It is the sample drawn with seed {seed}."


class FakeOpenAI(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        state = STATE
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state.lock:
            state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            action = state.script.pop(0) if state.script else None
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.delay:
                time.sleep(state.delay)
            if action == "hang":  # never answer in time: the client must time out
                state.release.wait(5)
                return
            if isinstance(action, int):
                # a careless server that echoes the request's credentials in its error message
                error = {"error": {"message": f"rejected credentials {self.headers.get('Authorization')}"}}
                self.reply(action, error)
                return
            if action == "garbage":
                self.reply(200, {"object": "not a completion"})
                return
            text = self_edit(body)
            choice = {"message": {"role": "assistant", "content": text}} if "messages" in body else {"text": text}
            self.reply(200, {"choices": [{"index": 0, **choice, "finish_reason": "stop"}]})
        finally:
            with state.lock:
                state.in_flight -= 1

    def reply(self, code, payload):
        out = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    global STATE
    STATE = Fake()
    with loopback(FakeOpenAI) as url:
        yield url
        STATE.release.set()


@pytest.fixture
def domain():
    return KnowledgeDomain()


def sampling(url, tmp_path, k=2, **served):
    served = {"model": "fake", "api_key_env": KEY_ENV, "timeout_s": 5.0, "retries": 2, "backoff_s": 0.01,
              "cache": str(tmp_path / "served.jsonl"), **served}
    return SamplingConfig(k=k, temperature=0.9, top_p=0.8, max_new_tokens=40, seed=7,
                          served=ServedConfig(url=url, **served))


def test_chat_route_returns_k_texts_with_a_seed_per_request(server, tmp_path, domain, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = sampling(server, tmp_path, k=3)
    teacher = ServedTeacher(cfg, domain)
    insts = domain.load("builtin", "heldout[:2]")
    out = teacher.sample(insts, round_=1)
    assert teacher.chat and [len(s.texts) for s in out] == [3, 3]
    assert [s.prompt for s in out] == [domain.teacher_prompt(i) for i in insts]
    assert len(STATE.requests) == 6
    for req in STATE.requests:
        body = req["body"]
        assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {SECRET}"
        assert body["model"] == "fake" and (body["temperature"], body["top_p"], body["max_tokens"]) == (0.9, 0.8, 40)
        assert body["messages"][0]["role"] == "user" and len(body["messages"]) == 1
    seeds = {(i.id, j): derive_seed(7, 1, i.id, j) for i in insts for j in range(3)}
    assert sorted(r["body"]["seed"] for r in STATE.requests) == sorted(seeds.values())
    assert len(set(seeds.values())) == 6  # every sample its own seed
    for inst, samples in zip(insts, out):
        sent = {r["body"]["seed"] for r in STATE.requests if r["body"]["messages"][0]["content"] == samples.prompt}
        assert sent == {seeds[(inst.id, j)] for j in range(3)}
        assert samples.texts == [self_edit({"seed": seeds[(inst.id, j)]}) for j in range(3)]
        assert domain.parse(inst, samples.texts[0]).items


def test_completions_route_sends_the_raw_prompt(server, tmp_path, domain):
    cfg = sampling(server, tmp_path, k=2, api="completions", seed_per_request=False, api_key_env="")
    teacher = ServedTeacher(cfg, domain)
    inst = domain.load("builtin", "heldout[:1]")[0]
    (samples,) = teacher.sample([inst])
    assert not teacher.chat and len(samples.texts) == 2 and samples.texts[0].startswith("Question:")
    assert [r["path"] for r in STATE.requests] == ["/v1/completions"] * 2
    for req in STATE.requests:
        assert req["body"]["prompt"] == domain.teacher_prompt(inst) and "messages" not in req["body"]
        assert "seed" not in req["body"] and req["auth"] is None


def test_transient_failures_are_retried_with_backoff(server, tmp_path, domain):
    STATE.script = [503, 503]
    teacher = ServedTeacher(sampling(server, tmp_path, k=1), domain)
    (samples,) = teacher.sample(domain.load("builtin", "heldout[:1]"))
    assert samples.texts[0].startswith("Question:")
    assert len(STATE.requests) == 3 and teacher.requests == 3
    assert len({r["body"]["seed"] for r in STATE.requests}) == 1  # the same sample, asked again


def test_persistent_server_errors_fail_after_the_retries(server, tmp_path, domain):
    STATE.script = [500, 500, 500]
    with pytest.raises(ServedTeacherError, match=r"failed after 3 attempts: HTTP 500"):
        ServedTeacher(sampling(server, tmp_path, k=1), domain).sample(domain.load("builtin", "heldout[:1]"))


def test_a_refused_key_fails_at_once_and_the_key_appears_nowhere(server, tmp_path, domain, monkeypatch):
    from seal.run import EXPECTED

    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = parse_config(["--mode", "teacher_student", "--student.name", "/m", "--outer.rounds", "0",
                        "--sampling.backend", "openai", "--sampling.served.url", server,
                        "--sampling.served.model", "fake", "--sampling.served.api_key_env", KEY_ENV,
                        "--sampling.served.cache", str(tmp_path / "served.jsonl"), "--sampling.k", "1",
                        "--output_dir", str(tmp_path / "run")])
    RunStore(cfg.output_dir, to_dict(cfg))
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    assert SECRET not in config_yaml and f"api_key_env: {KEY_ENV}" in config_yaml
    STATE.script = [401]
    with pytest.raises(ServedTeacherError) as err:
        ServedTeacher(cfg.sampling, domain).sample(domain.load("builtin", "heldout[:1]"))
    message = str(err.value)
    assert "refused the request: HTTP 401" in message and f"check the key in the environment variable {KEY_ENV}" \
        in message
    assert SECRET not in message and "rejected credentials Bearer <redacted>" in message  # the echo is masked
    assert len(STATE.requests) == 1 and STATE.requests[0]["auth"] == f"Bearer {SECRET}"  # sent, not retried
    assert isinstance(err.value, EXPECTED)  # a recipe prints one `error:` line


def test_a_missing_key_is_named(server, tmp_path, domain, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    STATE.script = [401]
    with pytest.raises(ServedTeacherError, match=f"the environment variable {KEY_ENV} is not set"):
        ServedTeacher(sampling(server, tmp_path, k=1), domain).sample(domain.load("builtin", "heldout[:1]"))


def test_a_slow_server_hits_the_timeout(server, tmp_path, domain):
    STATE.script = ["hang", "hang"]
    teacher = ServedTeacher(sampling(server, tmp_path, k=1, timeout_s=0.2, retries=1), domain)
    start = time.monotonic()
    with pytest.raises(ServedTeacherError, match=r"failed after 2 attempts: no reply within "
                                                 r"sampling.served.timeout_s 0.2 s \(timed out\)"):
        teacher.sample(domain.load("builtin", "heldout[:1]"))
    assert time.monotonic() - start < 3 and len(STATE.requests) == 2


def test_a_malformed_reply_is_a_clear_error(server, tmp_path, domain):
    STATE.script = ["garbage"]
    with pytest.raises(ServedTeacherError, match=r"sent a reply without choices\[0\]\.message\.content"):
        ServedTeacher(sampling(server, tmp_path, k=1), domain).sample(domain.load("builtin", "heldout[:1]"))
    assert len(STATE.requests) == 1


def test_the_disk_cache_means_a_resumed_run_never_pays_twice(server, tmp_path, domain, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = sampling(server, tmp_path, k=2)
    insts = domain.load("builtin", "heldout[:2]")
    first = ServedTeacher(cfg, domain).sample(insts)
    assert len(STATE.requests) == 4
    again = ServedTeacher(cfg, domain)  # a new process reads the cache from disk
    assert [s.texts for s in again.sample(insts)] == [s.texts for s in first]
    assert len(STATE.requests) == 4 and again.requests == 0
    cache = tmp_path / "served.jsonl"
    assert SECRET not in cache.read_text() and len(cache.read_text().splitlines()) == 4
    with cache.open("a") as fh:  # a line cut short by a kill is skipped, not fatal
        fh.write('{"key": "abc", "te')
    assert ServedTeacher(cfg, domain).sample(insts[:1])[0].texts == first[0].texts and len(STATE.requests) == 4
    warmer = sampling(server, tmp_path, k=2)
    warmer.temperature = 0.5  # another temperature is another sample
    ServedTeacher(warmer, domain).sample(insts[:1])
    assert len(STATE.requests) == 6


def test_concurrency_is_bounded(server, tmp_path, domain):
    STATE.delay = 0.2
    teacher = ServedTeacher(sampling(server, tmp_path, k=2, concurrency=2), domain)
    out = teacher.sample(domain.load("builtin", "heldout[:3]"))
    assert [len(s.texts) for s in out] == [2, 2, 2] and len(STATE.requests) == 6
    assert STATE.max_in_flight == 2


# ---------------------------------------------------------------- config and wiring


def test_a_served_teacher_is_refused_where_it_would_have_to_be_trained_or_absorb():
    served = ["--sampling.served.url", "http://localhost:8000/v1", "--sampling.served.model", "m"]
    with pytest.raises(ConfigError, match="sampling.backend openai: in mode self the teacher is the student"):
        parse_config(["--sampling.backend", "openai", "--outer.rounds", "0", *served])
    ts = ["--mode", "teacher_student", "--student.name", "/m", "--sampling.backend", "openai", *served]
    with pytest.raises(ConfigError, match="a served teacher cannot be trained: set outer.rounds 0 and use it for "
                                          "evaluation, or serve the weights our update writes"):
        parse_config(ts)
    with pytest.raises(ConfigError, match="a served teacher cannot be trained"):
        parse_config([*ts, "--outer.algorithm", "grpo", "--outer.rounds", "2"])
    cfg = parse_config([*ts, "--outer.rounds", "0"])
    assert cfg.sampling.backend == "openai" and cfg.sampling.served.api == "chat"
    # as an evaluation condition beside a trained hf teacher it is fine, in either mode
    cfg = parse_config(["--eval.conditions", "[no_update, base_teacher, round_teachers, served]", *served])
    assert cfg.outer.rounds == 1 and "served" in cfg.eval.conditions


def test_served_settings_are_checked():
    with pytest.raises(ConfigError, match="sampling.backend openai needs sampling.served.url"):
        parse_config(["--mode", "teacher_student", "--student.name", "/m", "--outer.rounds", "0",
                      "--sampling.backend", "openai"])
    with pytest.raises(ConfigError, match="eval.conditions has 'served' but sampling.served.url"):
        parse_config(["--eval.conditions", "[no_update, served]", "--sampling.served.url", "http://h/v1"])
    with pytest.raises(ConfigError, match=r"sampling.served.api: expected 'chat' or 'completions'"):
        parse_config(["--sampling.served.api", "responses"])
    with pytest.raises(ConfigError, match=r"sampling.served.url: expected a base URL starting with http"):
        parse_config(["--sampling.served.url", "localhost:8000/v1"])
    with pytest.raises(ConfigError, match=r"sampling.served.url: give the API's base URL"):
        parse_config(["--sampling.served.url", "http://localhost:8000/v1/chat/completions"])
    with pytest.raises(ConfigError, match=r"sampling.served.concurrency: must be in \[1, 256\], got 0"):
        parse_config(["--sampling.served.concurrency", "0"])
    with pytest.raises(ConfigError, match=r"sampling.served.timeout_s: must be > 0"):
        parse_config(["--sampling.served.timeout_s", "0"])
    with pytest.raises(ConfigError, match=r"sampling.served.retries: must be in \[0, 20\]"):
        parse_config(["--sampling.served.retries", "-1"])
    with pytest.raises(ConfigError, match=r"sampling.backend: expected one of 'hf', 'vllm', 'openai'"):
        parse_config(["--sampling.backend", "api"])


def test_build_session_loads_no_teacher_weights_for_a_served_teacher(server, tiny_model_dir, tmp_path, domain,
                                                                     monkeypatch):
    from seal.teacher import rest_em

    def no_teacher_weights(*args, **kwargs):
        raise AssertionError("a served teacher needs no transformers teacher model")

    monkeypatch.setattr(rest_em, "load_model", no_teacher_weights)
    monkeypatch.setattr(rest_em, "load_tokenizer", no_teacher_weights)
    cfg = parse_config(["--mode", "teacher_student", "--student.name", str(tiny_model_dir), "--outer.rounds", "0",
                        "--sampling.backend", "openai", "--sampling.served.url", server, "--sampling.served.model",
                        "fake", "--sampling.served.cache", str(tmp_path / "c.jsonl"), "--sampling.k", "2"])
    session = rest_em.build_session(cfg, domain)
    assert isinstance(session.teacher, ServedTeacher) and session.student is not None
    assert len(session.teacher.sample(domain.load("builtin", "heldout[:1]"))[0].texts) == 2


def test_recipe_evaluates_a_served_teacher_beside_the_others(server, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = args_for(tiny_model_dir, out, "--outer.rounds", "0", "--eval.conditions", "[no_update, served]",
                   "--sampling.served.url", server, "--sampling.served.model", "fake",
                   "--sampling.served.api_key_env", KEY_ENV, "--sampling.served.cache", str(tmp_path / "c.jsonl"))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, KEY_ENV: SECRET})
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("| condition |"):].split("\n\n")[0].splitlines()
    assert [r.split("|")[1].strip() for r in table[2:]] == ["no_update", "served"], proc.stdout
    edits = [json.loads(line) for line in (out / "eval_self_edits.jsonl").read_text().splitlines()]
    assert sorted(e["condition"] for e in edits) == ["served", "served"] and all(e["status"] == "ok" for e in edits)
    assert len(STATE.requests) == 2 and all(r["auth"] == f"Bearer {SECRET}" for r in STATE.requests)
    assert len({r["body"]["seed"] for r in STATE.requests}) == 2
    served_rows = [json.loads(line) for line in (out / "eval_records.jsonl").read_text().splitlines()
                   if json.loads(line)["condition"] == "served"]
    assert {r["setting"] for r in served_rows} == {"single", "cpt"}
    assert "served," in (out / "eval.csv").read_text()
    leaked = [p.name for p in out.rglob("*") if p.is_file() and SECRET in p.read_text(errors="replace")]
    assert leaked == [] and SECRET not in proc.stdout + proc.stderr


def test_recipe_with_the_openai_backend_evaluates_the_served_model_as_base_teacher(server, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = args_for("/nowhere/no-teacher-weights", out, "--mode", "teacher_student", "--student.name",
                   str(tiny_model_dir), "--outer.rounds", "0", "--sampling.backend", "openai",
                   "--eval.conditions", "[no_update, base_teacher, served]", "--eval.cpt", "false",
                   "--sampling.served.url", server, "--sampling.served.model", "fake",
                   "--sampling.served.cache", str(tmp_path / "c.jsonl"))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| base_teacher |" in proc.stdout and "| served |" in proc.stdout
    edits = [json.loads(line) for line in (out / "eval_self_edits.jsonl").read_text().splitlines()]
    assert sorted(e["condition"] for e in edits) == ["base_teacher"] * 2 + ["served"] * 2
    assert len(STATE.requests) == 4 and len({r["body"]["seed"] for r in STATE.requests}) == 4


def test_recipe_prints_one_error_line_for_an_unreachable_server(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cmd = args_for(tiny_model_dir, out, "--outer.rounds", "0", "--eval.conditions", "[served]", "--eval.cpt", "false",
                   "--sampling.served.url", "http://127.0.0.1:9/v1", "--sampling.served.model", "fake",
                   "--sampling.served.retries", "0", "--sampling.served.cache", str(tmp_path / "c.jsonl"))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr[-4000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: served teacher at http://127.0.0.1:9/v1: cannot connect"), proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr  # refused before any model loads
    assert "Traceback" not in proc.stderr


def test_the_endpoint_and_its_model_are_checked_before_any_model_loads(server, tmp_path, domain):
    ServedTeacher(sampling(server, tmp_path), domain).check()  # serves "fake"
    wrong = sampling(server, tmp_path)
    wrong.served.model = "Qwen/Qwen2.5-7B"
    with pytest.raises(ServedTeacherError, match=r"does not serve sampling.served.model 'Qwen/Qwen2.5-7B' "
                                                 r"\(it serves: fake\)"):
        ServedTeacher(wrong, domain).check()
    assert STATE.requests == []  # GETs only: no sampling request was spent
