"""What teacher and student both speak: configs, domains, graders, models, records, the run store."""

from seal.shared.arc import ArcDomain, ArcTask
from seal.shared.config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    InnerConfig,
    ModelConfig,
    OuterConfig,
    SamplingConfig,
    SealConfig,
)
from seal.shared.config_parser import parse_config, redacted
from seal.shared.dist import Dist, init_dist
from seal.shared.domain import (
    DataError,
    Domain,
    Example,
    Queries,
    Score,
    SelfEdit,
    SelfEditError,
    TrainingPlan,
    make_domain,
    parse_split,
    register_domain,
)
from seal.shared.graders import contains, exact_match, f1, get_grader, normalize
from seal.shared.judge import Judge, JudgeConfig, JudgeError
from seal.shared.knowledge import KnowledgeDomain, Passage, Question
from seal.shared.models import ModelLoadError, format_prompt, load_model
from seal.shared.records import BaselineRecord, EvalRecord, RewardRecord, RoundRecord, SelfEditRecord
from seal.shared.store import RunDirError, RunStore
from seal.shared.tracking import Tracker

__all__ = [
    "ArcDomain", "ArcTask", "BaselineRecord", "ConfigError", "DataConfig", "DataError", "Dist", "Domain",
    "EvalConfig", "EvalRecord", "Example", "InnerConfig", "Judge", "JudgeConfig", "JudgeError", "KnowledgeDomain",
    "ModelConfig", "ModelLoadError", "OuterConfig", "Passage", "Queries", "Question", "RewardRecord", "RoundRecord",
    "RunDirError", "RunStore", "SamplingConfig", "Score", "SealConfig", "SelfEdit", "SelfEditError",
    "SelfEditRecord", "TrainingPlan", "Tracker", "contains", "exact_match", "f1", "format_prompt", "get_grader",
    "init_dist", "load_model", "make_domain", "normalize", "parse_config", "parse_split", "redacted",
    "register_domain",
]
