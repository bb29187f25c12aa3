"""The model that absorbs self-edits: a LoRA inner loop, scoring, and a cached no-update baseline."""

from seal.student.inner_loop import AbsorbStats, InnerLoopError, SeedOutcome, Student

__all__ = ["AbsorbStats", "InnerLoopError", "SeedOutcome", "Student"]
