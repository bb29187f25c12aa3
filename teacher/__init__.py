"""The self-edit policy: sampling self-edits, learning from their rewards (ReST-EM, GRPO), held-out evaluation.

Modules: `sampling` (Teacher: transformers generate), `vllm_sampling` (the vLLM backend), `served` (an
OpenAI-compatible endpoint, not trained), `rest_em` (rounds of sample → reward → select → TRL SFT), `grpo` (TRL
GRPOTrainer with the student's gain as reward), `rewards` (the one way a batch of self-edits goes through the
student), `evaluation` (the held-out table), `records` (records and tables), `checkpoints` (round teachers on
disk), `trl_args`.
"""

from seal.teacher.evaluation import evaluate, self_edit_files
from seal.teacher.grpo import StudentReward, run_grpo
from seal.teacher.records import format_rounds, write_eval_tables
from seal.teacher.rest_em import completion_logprob, learn, run_rounds, select
from seal.teacher.sampling import Samples, Teacher, derive_seed
from seal.teacher.served import ServedTeacher, ServedTeacherError

__all__ = ["Samples", "ServedTeacher", "ServedTeacherError", "StudentReward", "Teacher", "completion_logprob",
           "derive_seed", "evaluate", "self_edit_files", "format_rounds", "learn", "run_grpo", "run_rounds", "select",
           "write_eval_tables"]
