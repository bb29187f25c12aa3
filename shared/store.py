"""The run directory: the resolved config and append-only JSONL tables.

Every record is one line appended to an O_APPEND descriptor and fsynced, all of it or nothing (a short
write on a full disk is undone and reported), so a killed process leaves at most one torn last line,
which readers skip and the next writer cuts. A line that is complete but not a record is damage that
readers report with the file and line number. A run directory remembers the
config that made it and refuses a different one (changing only where results go or how they are
reported — `output_dir`, `threads`, `report_to`, `wandb`, `log_level` — or the `eval` section, whose
records are keyed by condition, instance, self-edit and seed, is fine).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar, overload

import yaml

from seal.shared.config_parser import redacted
from seal.shared.records import Record

R = TypeVar("R", bound=Record)

# Keys that do not change results: a run may be resumed with other values for them.
NON_RESULT_KEYS = ("output_dir", "threads", "report_to", "wandb", "log_level", "eval", "dist_timeout_minutes")


class RunDirError(RuntimeError):
    """The run directory belongs to another config or cannot be used."""


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: store them as null rather than writing invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


ADDED_KEYS = ("sampling.served", "inner.lr_scheduler", "inner.warmup_steps", "data.per_round", "data.shuffle_seed",
              "data.eval_shuffle_seed", "inner.train_on_padding", "data.disjoint_articles")
"""Config keys added after run directories existed: left out of the digest while they hold their default,
so a run made before a key existed still resumes (the key could not have changed its results)."""


NESTED_NON_RESULT_KEYS = ("sampling.served.url", "sampling.served.api_key_env", "sampling.served.timeout_s",
                          "sampling.served.retries", "sampling.served.backoff_s", "sampling.served.concurrency",
                          "sampling.served.cache", "continual.paper_results", "inner.max_row_tokens",
                          "inner.gradient_checkpointing", "inner.score_batch_tokens")
"""How a served teacher is reached, not what it samples (the model, route, seeds and sampling settings are
in the digest): a run may resume against a server on another port or with other timeouts. What is only
shown beside the results (the paper's continual matrix). And how the inner loop fits in memory (passes per
step, recomputed activations, generation batches): the same steps, so a run that ran out of memory can
resume with smaller ones."""

JUDGE_CONNECTION = ("url", "api_key_env", "timeout_s", "retries", "backoff_s", "cache")
"""How the knowledge domain's LLM judge is reached (`domain.judge.*`), not what it grades (its model is a
result key): a run may resume against the judge on another port or with other timeouts, as
sampling.served. (Its verdicts are cached by model, question, gold answer and answer.)"""

EVAL_SELECTION = ("data.eval_split", "data.eval_limit", "data.eval_shuffle_seed")
"""Which held-out instances an evaluation reads: like the `eval` section, not a result key (its cells are
keyed by instance id, the instance's place in the data source, and the tables keep only the current
held-out set's), so evaluating more passages later reuses every cell already measured. Except under
`data.disjoint_articles`, where the held-out articles decide the training set. Run directories made
while these were result keys carry a digest with them (`config_digest(..., legacy=2)`)."""


def config_digest(config: dict[str, Any], legacy: int = 0) -> str:
    """A hash of what can change results (`result_config`)."""
    return hashlib.sha256(json.dumps(result_config(config, legacy), sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


LEGACY_DIGESTS = (1, 2)
"""The digests run directories were made with before: 1 while the judge's connection settings were result
keys (JUDGE_CONNECTION), 2 also while the held-out selection was (EVAL_SELECTION). Such a directory
resumes and is marked anew."""


ARC_TTT_SET = ("official families, plain and permuted copies; the leading JSON object; each task's answers within "
               "its own budget, test inputs counted")
"""What an ARC reward is measured under: the test-time-training set an augmentation switch builds (since the
official families landed, shared/arc.py _ttt_examples), how a self-edit is read (the JSON object it starts;
a cut-off one is unusable) and each task's answer budget (counting its test inputs, whatever shares its
generation): marked in the digest, so an ARC run directory made before is refused instead of mixing
rewards measured under two rules."""

KNOWLEDGE_RULES = ("every question a passage lists, repeats included",
                   "seal split: list markers before a space, answers as words")
"""What a knowledge run's cells are measured under, where it changed: a passage's questions (a question
asked twice counted once before, so a real-data passage could lose one: the paper's 200 evaluation
passages held 971 questions, not 974) and how the `seal` split reads a self-edit ("1.5 million" lost its
"1.", "(Carolina)" ended a question). Marked in the digest where they apply (real data; split seal), so a
run directory made before is refused instead of mixing cells measured under both."""

RENAMED_FORMATS = ("implications-long", "implications-very-long", "rewrite", "self-qa")
"""Knowledge formats whose names now stand for the official prompt texts (their earlier texts are the
`-lines`, `-dashes`, `-pairs` formats): the digest marks them, so a run directory made under the old
meaning is refused instead of mixing self-edits of two prompts."""


def result_config(config: dict[str, Any], legacy: int = 0) -> dict[str, Any]:
    """The config without NON_RESULT_KEYS, with the nested non-result keys set to their defaults, and without
    the keys added later (ADDED_KEYS) while at their defaults — so a run directory made before a key existed
    keeps its digest. `legacy`: as an earlier version made it (LEGACY_DIGESTS)."""
    defaults = _defaults()
    relevant = {k: v for k, v in config.items() if k not in NON_RESULT_KEYS}
    judge = _get(relevant, "domain.judge")
    if not legacy and isinstance(judge, dict):
        relevant = _with(relevant, ["domain", "judge"], {k: v for k, v in judge.items() if k not in JUDGE_CONNECTION})
    selection = () if legacy >= 2 or _get(relevant, "data.disjoint_articles") is True else EVAL_SELECTION
    for dotted in (*NESTED_NON_RESULT_KEYS, *selection):
        if _get(relevant, dotted) is not _MISSING:
            relevant = _with(relevant, dotted.split("."), _get(defaults, dotted))
    for dotted in ADDED_KEYS:
        value = _get(relevant, dotted)
        if value is not _MISSING and value == _get(defaults, dotted):
            relevant = _without(relevant, dotted.split("."))
    domain = relevant.get("domain")
    if isinstance(domain, dict) and domain.get("name", "knowledge") == "knowledge" \
            and domain.get("format") in RENAMED_FORMATS:
        relevant = _with(relevant, ["domain", "format"], f"{domain['format']} (official prompt)")
    if isinstance(domain, dict) and domain.get("name") == "arc":  # see ARC_TTT_SET
        relevant = _with(relevant, ["domain", "ttt_set"], ARC_TTT_SET)
    if isinstance(domain, dict) and domain.get("name", "knowledge") == "knowledge":  # see KNOWLEDGE_RULES
        questions, split = KNOWLEDGE_RULES
        rules = ([questions] if _get(relevant, "data.source") not in ("builtin", _MISSING) else []) \
            + ([split] if domain.get("split", "seal") == "seal" else [])
        if rules:
            relevant = _with(relevant, ["domain", "rules"], rules)
    return relevant


_MISSING = object()


def _defaults() -> dict[str, Any]:
    from seal.shared.config import ContinualRunConfig
    from seal.shared.config_parser import to_dict

    return to_dict(ContinualRunConfig())  # every section's defaults (SealConfig's and `continual`)


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _with(tree: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """A copy of `tree` with the key at `path` set to `value`."""
    head, *rest = path
    return {**tree, head: value if not rest else _with(tree[head], rest, value)}


def _without(tree: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """A copy of `tree` without the key at `path`."""
    head, *rest = path
    if not rest:
        return {k: v for k, v in tree.items() if k != head}
    return {**tree, head: _without(tree[head], rest)}


class RunStore:
    """Rank 0 writes `TABLE.jsonl` and the config marker; rank r > 0 of a multi-process run writes
    `TABLE.rank{r}.jsonl` (so no two processes append to one file) and only checks the marker.
    Readers see the union of all ranks' files."""

    def __init__(self, path: str | os.PathLike, config: dict[str, Any], rank: int = 0):
        self.path = Path(path)
        self.rank = rank
        self._repaired: set[str] = set()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunDirError(f"cannot create the run directory {self.path}: {err.strerror or err}") from err
        digest = config_digest(config)
        marker = self.path / "config.yaml"
        results = sorted(p.name for p in self.path.iterdir() if p.suffix == ".jsonl" or p.name == "teachers")
        if marker.exists() and results:
            saved = self._read_marker(marker)
            diff = _diff(result_config(saved.get("config", {})), result_config(redacted(config)))
            legacy = {config_digest(config, era) for era in LEGACY_DIGESTS}
            # made by an earlier version whose digest also counted settings that no longer do (LEGACY_DIGESTS),
            # which may have changed since: the marker's own config reproduces its digest, and no setting that
            # counts now differs
            same_run = saved.get("digest") in legacy or (not diff and saved.get("digest") in {
                config_digest(saved.get("config", {}), era) for era in (0, *LEGACY_DIGESTS)})
            if saved.get("digest") != digest and same_run:
                if rank == 0:  # the same run, marked anew
                    self._write_atomic(marker, yaml.safe_dump({"digest": digest, "config": redacted(config)},
                                                              sort_keys=False))
            elif saved.get("digest") != digest:
                changed = "; ".join(diff[:6]) or ("a setting whose meaning changed since it was made, e.g. the "
                                                  "ARC test-time-training set")
                raise RunDirError(
                    f"{self.path} holds a run with a different config ({changed}). "
                    "Use another output_dir, or delete the directory to start over.")
        else:  # a new run, or one that stopped before its first result: (re)write the marker
            if results:  # its identity is gone: results of an unknown config must not mix with new ones
                raise RunDirError(f"{self.path} holds results ({', '.join(results[:3])}) but no config.yaml, so "
                                  "the config that made them is unknown. Use another output_dir, or delete the "
                                  "directory to start over.")
            if rank == 0:  # other ranks only check: the main process writes the marker
                self._write_atomic(marker, yaml.safe_dump({"digest": digest, "config": redacted(config)},
                                                          sort_keys=False))

    @staticmethod
    def _read_marker(marker: Path) -> dict[str, Any]:
        try:
            saved = yaml.safe_load(marker.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise RunDirError(f"{marker} is damaged ({err}); restore it or delete the run directory") from err
        if not isinstance(saved, dict) or "digest" not in saved:
            raise RunDirError(f"{marker} is not a SEAL run marker (no digest); restore it or delete the run "
                              "directory")
        return saved

    def _write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise RunDirError(f"cannot write {path}: {err.strerror or err}") from err

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        self._write_atomic(path, text)
        return path

    def write_json(self, name: str, value: Any) -> Path:
        """Strict JSON (NaN and infinities as null, which strict readers accept), indented."""
        return self.write_text(name, json.dumps(_clean(value), indent=1, allow_nan=False) + "\n")

    def _own(self, table: str) -> Path:
        return self.path / (f"{table}.jsonl" if self.rank == 0 else f"{table}.rank{self.rank}.jsonl")

    def append(self, table: str, record: Record | dict[str, Any]) -> None:
        """One line, all of it or nothing: a short write (a full disk) is undone and raises RunDirError,
        so the table never holds a fragment that the next record would be glued onto."""
        self.append_many(table, [record])

    def append_many(self, table: str, records: Sequence[Record | dict[str, Any]]) -> None:
        """Several lines in one write, all or nothing, so a kill cannot keep some of them: the records of
        one chunk of inner loops go together (a resumed run then re-forms the chunks the first run had,
        and trains them as it did, float summation order included)."""
        rows = [r.to_json() if isinstance(r, Record) else r for r in records]
        line = "".join(json.dumps(_clean(row), ensure_ascii=False) + "\n" for row in rows).encode()
        if not line:
            return
        path = self._own(table)
        if table not in self._repaired:
            _cut_torn_tail(path)
            self._repaired.add(table)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as err:
            raise RunDirError(f"cannot write {path}: {err.strerror or err}") from err
        try:
            start = os.fstat(fd).st_size
            written = 0
            try:
                while written < len(line):
                    n = os.write(fd, line[written:])
                    if n <= 0:
                        raise OSError(28, "No space left on device")
                    written += n
                os.fsync(fd)
            except OSError as err:
                os.ftruncate(fd, start)  # take the fragment back: the table stays whole lines
                raise RunDirError(f"cannot append to {path} ({err.strerror or err}); everything before this "
                                  "record is kept: free space and run the same command to resume") from err
        finally:
            os.close(fd)

    def read(self, table: str) -> list[dict[str, Any]]:
        return list(self._rows(table))

    @overload
    def iter(self, table: str) -> Iterator[dict[str, Any]]: ...

    @overload
    def iter(self, table: str, cls: type[R]) -> Iterator[R]: ...

    def iter(self, table: str, cls: type[Record] | None = None) -> Iterator[Any]:
        """Every rank's rows of `table`, as `cls` records when given (else plain dicts)."""
        for row in self._rows(table):
            yield cls.from_json(row) if cls is not None else row

    def _rows(self, table: str) -> Iterator[dict[str, Any]]:
        return read_table(self.path, table)


def read_table(run_dir: Path, table: str) -> Iterator[dict[str, Any]]:
    """Every rank's rows of `table` in a run directory (read-only: recipes/report.py reads with it too).
    Lines split on b"\n" only (text may hold U+2028 and kin, which str.splitlines would split on); a torn
    final line of a killed writer is skipped."""
    for path in [run_dir / f"{table}.jsonl", *sorted(run_dir.glob(f"{table}.rank*.jsonl"))]:
        if not path.exists():
            continue
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.endswith(b"\n"):
                    break  # torn final line of a killed writer
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise RunDirError(f"{path}:{n} is not a JSON record ({err}); the run directory is "
                                      "damaged: remove that line (results after it may be lost) or start "
                                      "over") from err
                if not isinstance(row, dict):
                    raise RunDirError(f"{path}:{n} is not a JSON object")
                yield row


def _cut_torn_tail(path: Path) -> None:
    """A writer killed mid-line leaves bytes after the last newline: a line that provably never finished
    (every complete record ends with one). Cut them before appending."""
    if not path.exists() or not path.stat().st_size:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            data = path.read_bytes()
            fh.truncate(data.rfind(b"\n") + 1)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if key in NON_RESULT_KEYS and not prefix:
                continue
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
