"""The model that absorbs self-edits: a LoRA inner loop, scoring, and a cached no-update baseline."""

from seal.student.inner_loop import AbsorbStats, InnerLoopError, Job, JobResult, SeedOutcome, Student
from seal.student.multi_lora import LoRABank
from seal.student.partitioned import load_partitioned_student

__all__ = ["AbsorbStats", "InnerLoopError", "Job", "JobResult", "LoRABank", "SeedOutcome", "Student",
           "load_partitioned_student"]
