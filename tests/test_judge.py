"""The LLM judge against a small OpenAI-compatible server on loopback, started by the test."""

import json
import threading
from http.server import BaseHTTPRequestHandler

import pytest

from seal.shared.judge import Judge, JudgeConfig, JudgeError
from seal.shared.knowledge import KnowledgeDomain, KnowledgeOptions, Passage, Question
from tests.conftest import loopback


class FakeJudge(BaseHTTPRequestHandler):
    """Answers 'yes' when the gold answer appears in the student answer; scripted failures first."""

    failures: list[int] = []
    requests: list[dict] = []
    hang = threading.Event()
    content: str | None = "verdict"  # None: a message without text, as a reasoning model cut off at max_tokens

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.failures:
            code = self.failures.pop(0)
            if code == 0:  # never answer: the client must time out
                self.hang.wait(5)
                return
            self.send_response(code)
            self.end_headers()
            return
        prompt = body["messages"][0]["content"]
        gold = prompt.split("Gold answer: ")[1].split("\n")[0]
        student = prompt.split("Student answer: ")[1].split("\n")[0]
        verdict = ("Yes" if gold.lower() in student.lower() else "no") if self.content else None
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    FakeJudge.failures, FakeJudge.requests, FakeJudge.content = [], [], "verdict"
    FakeJudge.hang.clear()
    with loopback(FakeJudge) as url:
        yield url
        FakeJudge.hang.set()


def config(url, tmp_path, **kw):
    return JudgeConfig(url=url, model="judge-test", api_key_env="SEAL_TEST_JUDGE_KEY", timeout_s=0.5, retries=2,
                       backoff_s=0.0, cache=str(tmp_path / "verdicts.jsonl"), **kw)


def test_verdicts_use_the_rubric_the_key_and_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SEAL_TEST_JUDGE_KEY", "sk-test-secret")
    judge = Judge(config(server, tmp_path))
    assert judge.grade("Who built it?", "It was Hesper Quill.", "Hesper Quill") == 1.0
    assert judge.grade("Who built it?", "Nobody", "Hesper Quill") == 0.0
    (first, _) = FakeJudge.requests
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test-secret"
    assert first["body"]["model"] == "judge-test" and "Respond ONLY with 'yes' or 'no'" in \
        first["body"]["messages"][0]["content"]
    again = Judge(config(server, tmp_path))  # a new process reads the cache from disk
    assert again.grade("Who built it?", "It was Hesper Quill.", "Hesper Quill") == 1.0
    assert len(FakeJudge.requests) == 2
    assert "sk-test-secret" not in (tmp_path / "verdicts.jsonl").read_text()


def test_transient_failures_are_retried(server, tmp_path):
    FakeJudge.failures = [503, 0]  # a server error, then a hang past the timeout
    assert Judge(config(server, tmp_path)).grade("q", "a 1874 b", "1874") == 1.0
    assert len(FakeJudge.requests) == 3


def test_persistent_failure_and_client_errors_fail_loudly(server, tmp_path):
    FakeJudge.failures = [500, 500, 500]
    with pytest.raises(JudgeError, match="failed after 3 attempts: HTTP 500"):
        Judge(config(server, tmp_path)).grade("q", "a", "b")
    FakeJudge.failures = [401]
    with pytest.raises(JudgeError, match="refused the request: HTTP 401"):
        Judge(config(server, tmp_path)).grade("q", "a", "c")


def test_knowledge_domain_grades_with_the_judge(server, tmp_path):
    domain = KnowledgeDomain(KnowledgeOptions(grader="judge", judge=config(server, tmp_path)))
    passage = Passage("p", "T", "ctx", [Question("Who?", "Oda Brannick"), Question("When?", "1962")])
    score = domain.evaluate(passage, lambda prompts, max_new_tokens, stop="\n": ["Oda Brannick, the keeper", "1963"])
    assert score.value == 0.5
    assert score.details[0]["grades"]["judge"] == 1.0 and score.details[0]["grades"]["exact_match"] == 0.0


def test_judge_needs_a_url():
    with pytest.raises(ValueError, match="domain.judge.url: grader .judge. needs an OpenAI-compatible base URL"):
        KnowledgeDomain(KnowledgeOptions(grader="judge"))


def test_a_reply_without_text_is_a_judge_error_not_a_crash(server, tmp_path):
    FakeJudge.content = None
    with pytest.raises(JudgeError, match="unexpected reply .*no text in the reply's message"):
        Judge(config(server, tmp_path)).grade("q", "a", "b")


def test_the_judge_settings_are_checked_when_the_config_is_read(monkeypatch, tmp_path):
    """retries -1 made no request and failed with no reason; timeout -1 was a traceback; a URL without a
    scheme was retried as if the failure were temporary and then printed unmasked; `~` in the cache path
    made a folder named `~`."""
    from seal.shared.config import ConfigError
    from seal.shared.config_parser import parse_config
    from seal.shared.domain import make_domain

    def domain(*args):
        return make_domain(parse_config(list(args)).domain)

    for args, message in ((("--domain.judge.retries", "-1"), r"domain.judge.retries: must be in \[0, 20\]"),
                          (("--domain.judge.timeout_s", "-1"), "domain.judge.timeout_s: must be > 0"),
                          (("--domain.judge.url", "localhost:8000/v1?key=SECRET123"),
                           "domain.judge.url: expected a base URL starting with http"),
                          (("--domain.judge.url", "http://h/v1/chat/completions"), "without the /chat/completions"),
                          (("--domain.answer_max_new_tokens", "0"), "domain.answer_max_new_tokens: must be >= 1")):
        with pytest.raises(ConfigError, match=message) as err:
            domain(*args)
        assert "SECRET123" not in str(err.value)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert domain("--domain.judge.cache", "~/v.jsonl").options.judge.cache == str(tmp_path / "v.jsonl")
