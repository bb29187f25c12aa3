"""A served teacher: self-edits from any OpenAI-compatible endpoint (`sampling.backend: openai`, and the
evaluation condition `served`).

Anything that speaks the OpenAI API can serve: `vllm serve MODEL`, `trl vllm-serve`, or an API model such as
GPT-4.1 (the paper's strong-teacher baseline). Configured under `sampling.served` (`seal.shared.config.ServedConfig`).

Each of an instance's k self-edits is one request. With `seed_per_request` it carries its own seed, derived from
(run seed, round, instance id, sample index), so a resumed run draws the same texts wherever the server honours
seeds. Replies are cached on disk (JSONL keyed by a hash of everything that decides a reply: URL with secrets
masked, model, api, prompt, seed, temperature, top_p, max tokens, sample index), so a resumed run never pays for a
sample twice. Requests run on a bounded thread pool (`concurrency`). Connection errors, timeouts, HTTP 429 and 5xx
are retried with exponential backoff; any other HTTP error, and a reply that is not the API's shape, raise
`ServedTeacherError` naming the endpoint and the status. The key is read from the environment variable named by
`api_key_env` for each request and is masked in anything a reply echoes back; it never reaches configs, logs,
errors or the cache.

A served teacher is not trained here: ReST-EM and GRPO update weights, and the server's are not ours.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Sequence

from seal.shared.config import SamplingConfig
from seal.shared.config_parser import redacted
from seal.shared.domain import Domain
from seal.shared.models import cache_dir
from seal.teacher.sampling import Samples, derive_seed

log = logging.getLogger("seal")

ROUTES = {"chat": "/chat/completions", "completions": "/completions"}
RETRY_AFTER_CAP_S = 60.0


class ServedTeacherError(RuntimeError):
    """The served teacher could not give a self-edit."""


class _Stopped(Exception):
    """Another request of the same call failed: the rest stop retrying."""


class ServedTeacher:
    """Samples self-edits from an OpenAI-compatible server; the same interface as `Teacher` and `VLLMTeacher`."""

    def __init__(self, sampling: SamplingConfig, domain: Domain):
        served = sampling.served
        if not served.ready:
            raise ServedTeacherError("a served teacher needs sampling.served.url and sampling.served.model")
        self.cfg, self.served, self.domain = sampling, served, domain
        self.chat = served.api == "chat"  # the chat route: the server applies the model's chat template
        self.base_url = redacted(served.url.rstrip("/"))
        self.endpoint = served.url.rstrip("/") + ROUTES[served.api]
        self.where = redacted(self.endpoint)
        self.cache_path = Path(served.cache) if served.cache else cache_dir() / "served_samples.jsonl"
        self.requests = 0  # HTTP requests sent (retries included)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cache = self._read_cache()

    def prompt(self, instance: Any) -> str:
        """What the server receives: the domain's teacher prompt (the user message on the chat route, the raw
        text on the completions route)."""
        return self.domain.teacher_prompt(instance)

    def sample(self, instances: Sequence[Any], k: int | None = None, round_: int = 0) -> list[Samples]:
        """k self-edits per instance: cached replies are read back, the rest requested `concurrency` at a time."""
        k = k or self.cfg.k
        start = time.perf_counter()
        prompts = [self.prompt(i) for i in instances]
        texts: list[list[str]] = [[""] * k for _ in instances]
        todo = []
        for n, (inst, prompt) in enumerate(zip(instances, prompts)):
            iid = self.domain.instance_id(inst)
            for j in range(k):
                seed = derive_seed(self.cfg.seed, round_, iid, j)
                key = self._key(prompt, seed, j)
                if key in self._cache:
                    texts[n][j] = self._cache[key]
                else:
                    todo.append((n, j, prompt, seed, key))
        if todo:
            self._stop.clear()
            with ThreadPoolExecutor(min(self.served.concurrency, len(todo)), thread_name_prefix="served") as pool:
                futures = {pool.submit(self._draw, prompt, seed, key): (n, j) for n, j, prompt, seed, key in todo}
                try:
                    for future in as_completed(futures):
                        n, j = futures[future]
                        texts[n][j] = future.result()
                except BaseException:
                    self._stop.set()  # queued requests are dropped, running ones stop retrying
                    for future in futures:
                        future.cancel()
                    raise
        seconds = (time.perf_counter() - start) / max(1, len(instances))
        return [Samples(prompt=p, texts=[t.strip() for t in ts], seconds=seconds) for p, ts in zip(prompts, texts)]

    # ------------------------------------------------------------ the disk cache

    def _key(self, prompt: str, seed: int, index: int) -> str:
        s = self.served
        raw = json.dumps([self.base_url, s.model, s.api, prompt, seed, self.cfg.temperature, self.cfg.top_p,
                          self.cfg.max_new_tokens, index])
        return hashlib.sha256(raw.encode()).hexdigest()

    def _read_cache(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if not self.cache_path.is_file():
            return out
        for line in self.cache_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:  # a line cut short by a kill is skipped (its sample is requested again)
                row = json.loads(line)
                out[row["key"]] = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return out

    def _remember(self, key: str, text: str) -> None:
        line = (json.dumps({"key": key, "model": self.served.model, "text": text}) + "\n").encode()
        with self._lock:
            self._cache[key] = text
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:  # one write of the whole line: processes sharing the cache never interleave inside a line
                os.write(fd, line)
            finally:
                os.close(fd)

    # ------------------------------------------------------------ one self-edit over HTTP

    def _draw(self, prompt: str, seed: int, key: str) -> str:
        if self._stop.is_set():
            raise _Stopped()
        text = self._request(prompt, seed)
        self._remember(key, text)
        return text

    def _body(self, prompt: str, seed: int) -> bytes:
        body: dict[str, Any] = {"model": self.served.model, "temperature": self.cfg.temperature,
                                "top_p": self.cfg.top_p, "max_tokens": self.cfg.max_new_tokens}
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.served.seed_per_request:
            body["seed"] = seed
        return json.dumps(body).encode()

    def _request(self, prompt: str, seed: int) -> str:
        served = self.served
        data = self._body(prompt, seed)
        headers = {"Content-Type": "application/json"}
        secret = os.environ.get(served.api_key_env, "") if served.api_key_env else ""
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        attempts, last, wait = served.retries + 1, "", 0.0
        for attempt in range(attempts):
            if attempt:
                wait = max(wait, served.backoff_s * 2 ** (attempt - 1))
                if self._stop.wait(wait):
                    raise _Stopped()
            wait = 0.0
            with self._lock:
                self.requests += 1
            request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=served.timeout_s) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as err:
                detail = _error_detail(err, secret)
                last = f"HTTP {err.code}{detail}"
                if err.code != 429 and err.code < 500:
                    raise ServedTeacherError(f"served teacher at {self.where} refused the request: {last}"
                                             f"{self._hint(err.code, secret)}") from None
                if err.code == 429:
                    wait = _retry_after(err)
            except (socket.timeout, TimeoutError):
                last = f"no reply within sampling.served.timeout_s {served.timeout_s:g} s (timed out)"
            except urllib.error.URLError as err:
                timed_out = isinstance(err.reason, (socket.timeout, TimeoutError))
                last = (f"no reply within sampling.served.timeout_s {served.timeout_s:g} s (timed out)" if timed_out
                        else f"cannot connect ({_scrub(str(err.reason), secret)})")
            except (ConnectionError, http.client.HTTPException, OSError) as err:
                last = f"connection failed ({type(err).__name__}: {_scrub(str(err), secret)})"
            else:
                return self._text(raw, secret)
            log.warning("served teacher attempt %d/%d failed: %s", attempt + 1, attempts, last)
        raise ServedTeacherError(f"served teacher at {self.where} failed after {attempts} attempt"
                                 f"{'s' if attempts > 1 else ''}: {last}")

    def check(self) -> None:
        """Before any model loads: the endpoint answers `GET {url}/models` (vLLM's server and OpenAI's API
        both list their models there) and, when it lists any, serves `sampling.served.model`. A server
        without that route (404) is taken on trust; its first request will tell."""
        served = self.served
        secret = os.environ.get(served.api_key_env, "") if served.api_key_env else ""
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        request = urllib.request.Request(served.url.rstrip("/") + "/models", headers=headers, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=served.timeout_s) as resp:
                listing = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return
            raise ServedTeacherError(f"served teacher at {self.base_url} refused GET /models: HTTP {err.code}"
                                     f"{self._hint(err.code, secret)}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            raise ServedTeacherError(f"served teacher at {self.base_url}: cannot connect "
                                     f"({_scrub(str(reason), secret)})") from None
        except ValueError:  # not JSON (or not UTF-8): no listing to check against
            return
        data = listing.get("data") if isinstance(listing, dict) else None
        models = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if models and served.model not in models:
            raise ServedTeacherError(f"served teacher at {self.base_url} does not serve sampling.served.model "
                                     f"{served.model!r} (it serves: {', '.join(map(str, models[:8]))})")

    def _hint(self, code: int, secret: str) -> str:
        served = self.served
        if code in (401, 403):
            if not served.api_key_env:
                return " (sampling.served.api_key_env is empty, so no key was sent)"
            if not secret:
                return f" (the environment variable {served.api_key_env} is not set, so no key was sent)"
            return f" (check the key in the environment variable {served.api_key_env})"
        if code in (400, 404, 422):
            return (f" (check sampling.served.model {served.model!r} and sampling.served.api {served.api!r}: "
                    f"this route is {ROUTES[served.api]})")
        return ""

    def _text(self, raw: bytes, secret: str) -> str:
        """The self-edit in a reply of the chat or completions API; anything else is an error."""
        field = "choices[0].message.content" if self.chat else "choices[0].text"
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            if self.chat:
                message = choice["message"]
                text = message["content"]
                if text is None and isinstance(message.get("refusal"), str):
                    log.warning("served teacher refused to write a self-edit (%s); it counts as unusable",
                                _scrub(message["refusal"], secret)[:200])
                    return ""
            else:
                text = choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"{field} is {type(text).__name__}, not a string")
            return text
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as err:
            shown = _scrub(raw[:200].decode("utf-8", errors="replace"), secret)
            raise ServedTeacherError(f"served teacher at {self.where} sent a reply without {field} "
                                     f"({type(err).__name__}: {_scrub(str(err), secret)}); reply began "
                                     f"{shown!r}") from None


def _scrub(text: str, secret: str) -> str:
    """`text` with the key, and secrets inside URLs, masked (a server may echo a request back)."""
    if secret:
        text = text.replace(secret, "<redacted>")
    return redacted(text) if "://" in text else text


def _error_detail(err: urllib.error.HTTPError, secret: str) -> str:
    """The error message an OpenAI-compatible server puts in its body (`{"error": {"message": ...}}`), short."""
    try:
        body = err.read(2000).decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the status alone still says what happened
        body = ""
    finally:
        err.close()
    try:
        parsed = json.loads(body)
        message = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        message = message.get("message", message) if isinstance(message, dict) else message
        body = message if isinstance(message, str) else json.dumps(message)
    except (json.JSONDecodeError, TypeError, ValueError):
        pass
    body = re.sub(r"\s+", " ", _scrub(body, secret)).strip()
    return f": {body[:300]}" if body else ""


def _retry_after(err: urllib.error.HTTPError) -> float:
    try:
        return min(RETRY_AFTER_CAP_S, max(0.0, float(err.headers.get("Retry-After", 0))))
    except (TypeError, ValueError):
        return 0.0
