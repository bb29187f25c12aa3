"""The one way a batch of self-edits goes through the student: baselines first, then every inner loop.

A training round, GRPO's reward function and the held-out evaluation all hand `absorb_and_score` their
jobs. It makes sure the student knows the no-update baseline of every instance involved (read from the
run store, or measured and appended there at once), runs the jobs K adapters per pass, and passes each
chunk's results on as soon as they are scored, so a killed run loses at most one chunk. The gain over
the baseline is each result's `reward` (computed in one place: `JobResult.reward`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from seal.shared.domain import Score
from seal.shared.records import BaselineRecord
from seal.shared.store import RunStore
from seal.shared.tracking import Phase
from seal.student.inner_loop import Job, JobResult, Student


def load_baselines(store: RunStore, student: Student) -> None:
    """The baselines other processes (or an earlier run) measured, into the student's cache."""
    for rec in store.iter("baselines", BaselineRecord):
        student.baselines[(rec.student, rec.instance)] = Score(rec.score, rec.details)


def record_baselines(store: RunStore | None, student: Student, instances: Sequence[Any],
                     is_main: bool = True) -> list[float]:
    """The student's no-update score on each instance; each newly measured one is appended to the store
    at once."""
    fp, domain = student.base_fingerprint, student.domain
    missing = {domain.instance_id(i) for i in instances} - {iid for f, iid in student.baselines if f == fp}
    with Phase("no-update baselines", len(missing), is_main and bool(missing)) as phase:
        last = time.perf_counter()

        def measured(instance: Any, score: Score) -> None:
            nonlocal last
            now = time.perf_counter()
            if store is not None:
                store.append("baselines", BaselineRecord(fp, domain.instance_id(instance), score.value, score.details,
                                                         seconds=now - last))
            last = now
            phase.update()

        return [score.value for score in student.baseline_many(instances, measured)]


def absorb_and_score(student: Student, store: RunStore | None, jobs: Sequence[Job],
                     done: Callable[[list[JobResult]], None] | None = None, what: str = "inner loops",
                     is_main: bool = True) -> list[JobResult]:
    """Every job through the student (all ranks sharing a partitioned student call this together).
    `done` gets each chunk's results as soon as they are scored; progress is logged at least every 30 s."""
    record_baselines(store, student, [job.instance for job in jobs], is_main)
    with Phase(what, len(jobs), is_main) as phase:
        def chunk_done(results: list[JobResult]) -> None:
            if done is not None:
                done(results)
            phase.update(len(results))

        return student.run(jobs, done=chunk_done)
