"""An LLM judge behind any OpenAI-compatible `/chat/completions` endpoint, with the paper's yes/no rubric.

The key is read from the environment variable named in the config (never from the config itself) and
never logged or cached. Verdicts are cached on disk (JSONL keyed by a hash of model, question, gold and
prediction), transient failures (timeouts, connection errors, 429, 5xx) are retried with exponential
backoff, and anything else fails loudly with the endpoint's status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from seal.shared.config import Bound, ConfigError, check_base_url, resolve_path
from seal.shared.config_parser import redacted
from seal.shared.models import cache_dir

log = logging.getLogger("seal")

RUBRIC = (
    "You are a grading assistant. Your job is to determine whether a student's answer correctly answers the "
    "question based solely on the provided gold answer. Do not use any outside knowledge. The student answer can "
    "include additional information, but it must at least fully convey the gold answer and must not contradict "
    "it. Ignore style, phrasing, or extra details that do not affect correctness. Respond ONLY with 'yes' or "
    "'no'.\n\nQuestion: {question}\nGold answer: {gold}\nStudent answer: {prediction}\n"
    "Is the student answer correct based solely on the gold answer? Respond 'yes' or 'no'.")


class JudgeError(RuntimeError):
    """The judge endpoint could not give a verdict."""


@dataclass
class JudgeConfig:
    url: str | None = None
    """Base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1 or http://localhost:8000/v1."""
    model: str = "gpt-4.1"
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the key (empty: send no key)."""
    timeout_s: Annotated[float, Bound(0, low_open=True)] = 30.0
    """Seconds one request may take before it counts as failed."""
    retries: Annotated[int, Bound(0, 20)] = 4
    """Further attempts after a connection error, a timeout, HTTP 429 or 5xx (other errors fail at once)."""
    backoff_s: Annotated[float, Bound(0, 600)] = 1.0
    """Wait before the first retry, doubled for each further one."""
    cache: str | None = None
    """JSONL file of verdicts; None: `judge_verdicts.jsonl` in the SEAL cache folder ($SEAL_CACHE)."""

    def __post_init__(self):
        if self.url is not None:
            check_base_url("url", self.url, "the judge appends /chat/completions")
        if self.cache is not None:
            self.cache = resolve_path("cache", self.cache)


class Judge:
    def __init__(self, cfg: JudgeConfig):
        if not cfg.url:
            raise ConfigError("domain.judge.url: grader 'judge' needs an OpenAI-compatible base URL")
        self.cfg = cfg
        self.endpoint = cfg.url.rstrip("/") + "/chat/completions"
        self.cache_path = Path(cfg.cache) if cfg.cache else cache_dir() / "judge_verdicts.jsonl"
        self.verdicts: dict[str, float] = {}
        if self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                if line.endswith("}"):
                    row = json.loads(line)
                    self.verdicts[row["key"]] = row["verdict"]

    def _key(self, question: str, gold: str, prediction: str) -> str:
        raw = json.dumps([self.cfg.model, question, gold, prediction])
        return hashlib.sha256(raw.encode()).hexdigest()

    def grade(self, question: str, prediction: str, gold: str) -> float:
        key = self._key(question, gold, prediction)
        if key not in self.verdicts:
            verdict = self._ask(RUBRIC.format(question=question, gold=gold, prediction=prediction))
            self.verdicts[key] = verdict
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a") as fh:
                fh.write(json.dumps({"key": key, "verdict": verdict}) + "\n")
        return self.verdicts[key]

    def ping(self) -> None:
        """One small grading request (cached once it succeeds), so an unreachable judge, a refused key
        or an endpoint that does not speak the chat API fails before any model loads."""
        self.grade("What is 2 + 2?", "4", "4")

    def _ask(self, prompt: str) -> float:
        body = json.dumps({"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": 0, "max_tokens": 4}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as resp:
                    reply = json.loads(resp.read())
                text = reply["choices"][0]["message"]["content"]
                if not isinstance(text, str):  # e.g. null from a reasoning model cut off at max_tokens
                    raise TypeError(f"no text in the reply's message (content {text!r:.20})")
                return 1.0 if text.strip().lower().startswith("yes") else 0.0
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code != 429 and err.code < 500:
                    raise JudgeError(f"judge at {redacted(self.endpoint)} refused the request: "
                                     f"HTTP {err.code}") from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as err:
                last = type(err).__name__ if not isinstance(err, urllib.error.URLError) else str(err.reason)
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
                raise JudgeError(f"judge at {redacted(self.endpoint)} sent an unexpected reply ({err})") from None
            log.warning("judge attempt %d/%d failed: %s", attempt + 1, self.cfg.retries + 1, last)
        raise JudgeError(f"judge at {redacted(self.endpoint)} failed after {self.cfg.retries + 1} attempts: {last}")
