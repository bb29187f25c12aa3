"""The self-edit policy: prompts and sampling, and the outer loop that rewards its self-edits."""

from seal.teacher.outer import Session, build_session, format_table, reward_round, summary_rows
from seal.teacher.sampling import Samples, Teacher, derive_seed

__all__ = ["Samples", "Session", "Teacher", "build_session", "derive_seed", "format_table", "reward_round",
           "summary_rows"]
