"""What teacher and student both speak: configs, domains, graders, models, the run store."""

from seal.shared.arc import ArcDomain, ArcTask
from seal.shared.config import (ConfigError, DataConfig, InnerConfig, ModelConfig, OuterConfig, SamplingConfig,
                                SealConfig, parse_config, redacted)
from seal.shared.domain import (DataError, Domain, Example, Score, SelfEdit, SelfEditError, TrainingPlan,
                                make_domain, register_domain)
from seal.shared.graders import contains, exact_match, f1, get_grader, normalize
from seal.shared.knowledge import KnowledgeDomain, Passage, Question
from seal.shared.models import ModelLoadError, format_prompt, load_model
from seal.shared.dist import Dist, init_dist
from seal.shared.judge import Judge, JudgeConfig, JudgeError
from seal.shared.store import RunDirError, RunStore
from seal.shared.tracking import Tracker

__all__ = [
    "ArcDomain", "ArcTask", "Dist", "init_dist", "Judge", "JudgeConfig", "JudgeError", "Tracker",
    "ConfigError", "DataConfig", "InnerConfig", "ModelConfig", "OuterConfig", "SamplingConfig", "SealConfig",
    "parse_config", "redacted", "DataError", "Domain", "Example", "Score", "SelfEdit", "SelfEditError",
    "TrainingPlan", "make_domain", "register_domain", "contains", "exact_match", "f1", "get_grader", "normalize",
    "KnowledgeDomain", "Passage", "Question", "ModelLoadError", "format_prompt", "load_model", "RunDirError",
    "RunStore",
]
