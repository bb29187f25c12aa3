"""The self-edit policy: prompts and sampling, the ReST-EM outer loop, and held-out evaluation."""

from seal.teacher.grpo import StudentReward, run_grpo
from seal.teacher.evaluation import evaluate, format_csv, format_markdown, table_rows
from seal.teacher.outer import (Session, build_session, format_rounds, format_table, reward_round, run_rounds,
                                summary_rows)
from seal.teacher.rest_em import TeacherUpdate, completion_logprob, learn, select
from seal.teacher.sampling import Samples, Teacher, derive_seed

__all__ = ["Samples", "Session", "Teacher", "TeacherUpdate", "build_session", "completion_logprob", "derive_seed",
           "evaluate", "format_csv", "format_markdown", "format_rounds", "format_table", "learn", "reward_round",
           "run_grpo", "run_rounds", "select", "StudentReward", "summary_rows", "table_rows"]
