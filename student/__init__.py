"""The model that absorbs self-edits: a LoRA inner loop, scoring, and a cached no-update baseline."""

from seal.student.inner_loop import AbsorbStats, InnerLoopError, Job, JobResult, Student
from seal.student.loading import load_student, make_student
from seal.student.multi_lora import LoRABank

__all__ = ["AbsorbStats", "InnerLoopError", "Job", "JobResult", "LoRABank", "Student", "load_student",
           "make_student"]
