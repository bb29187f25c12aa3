"""Correctness bugs found by comparing with the paper's official code; each test failed before its fix."""

import math
from types import SimpleNamespace

import pytest
import torch

from seal.shared import KnowledgeDomain, RunStore
from seal.shared.config_parser import parse_config
from seal.shared.models import fingerprint
from seal.shared.records import EvalRecord, RewardRecord
from seal.teacher.records import table_rows


def test_b5_any_changed_weight_changes_the_fingerprint(tiny_model_dir):
    """A teacher update that leaves the first, middle and last tensors alone must not keep old baselines."""
    from seal.shared.config import ModelConfig
    from seal.shared.models import load_model

    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    before = fingerprint(model)
    params = [p for n, p in model.named_parameters()]
    with torch.no_grad():
        params[3].add_(1e-3)  # not one of the six tensors the old fingerprint sampled
    assert fingerprint(model) != before


def test_b6_offset_and_limits_select_the_instances():
    from seal.run import load_split

    cfg = parse_config(["--data.offset", "2", "--data.train_limit", "3", "--data.eval_limit", "1"])
    run = SimpleNamespace(cfg=cfg, domain=KnowledgeDomain())
    train, heldout = load_split(run, "train"), load_split(run, "eval")
    everything = KnowledgeDomain().load("builtin", "train")
    assert [p.id for p in train] == [p.id for p in everything[2:5]] and len(heldout) == 1


def test_b7_cpt_absorbs_the_passage_of_an_instance_whose_self_edit_was_unusable(tmp_path):
    from seal.teacher import evaluation

    domain = KnowledgeDomain()
    heldout = domain.load("builtin", "heldout[:2]")
    ok = domain.plan(heldout[0], domain.parse(heldout[0], "The keeper lit the lamp every night at dusk."))
    plans = {heldout[0].id: [(0, ok)], heldout[1].id: [(0, None)]}  # the second self-edit was unusable
    seen = {}

    class Student:
        slots = 1

        def run_shared(self, plan, seeds, instances, done):
            seen["texts"] = [e.completion for e in plan.examples]

    cfg = parse_config(["--eval.seeds", "[0]"])
    evaluation._cpt(cfg, domain, RunStore(tmp_path, {}), Student(), heldout, "base_teacher", plans, set(),
                    SimpleNamespace(shard=lambda x: list(x), is_main=True))
    assert f"{heldout[1].title}\n{heldout[1].context}" in seen["texts"]


def test_b8_the_standard_error_is_over_instances_with_seeds_averaged_first():
    rows = [EvalRecord("c", "single", inst, 0, seed, score, "ok")
            for inst, scores in (("a", (1.0, 0.0)), ("b", (1.0, 1.0))) for seed, score in enumerate(scores)]
    (row,) = table_rows(rows, ["c"], cpt=False)
    assert row["single_n"] == 2  # instances, not (instance, seed) cells
    assert row["single_mean"] == pytest.approx(0.75)
    assert row["single_se"] == pytest.approx(math.sqrt(((0.5 - 0.75) ** 2 + (1 - 0.75) ** 2) / 1 / 2))


def test_report_reads_every_rank_of_a_multi_process_run(tmp_path):
    import importlib.util
    import sys

    from tests.conftest import REPO

    store = RunStore(tmp_path, {"seed": 0})
    store.append("records", RewardRecord(0, "a", 0, 0, "ok", 0.0, 0.5, 0.5))
    RunStore(tmp_path, {"seed": 0}, rank=1).append("records", RewardRecord(0, "b", 0, 0, "ok", 0.0, 0.25, 0.25))
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        spec = importlib.util.spec_from_file_location("seal_report", REPO / "recipes" / "report.py")
        report = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(report)
    finally:
        sys.path[:] = [p for p in sys.path if p != str(REPO / "recipes")]
    rewards = report.round_rewards(report.read(tmp_path, "records", RewardRecord))
    assert rewards == {(0, "a", 0): 0.5, (0, "b", 0): 0.25}
    (tmp_path / "eval.csv").write_text('condition,single_mean\n"a,b",0.5\n')
    assert report.eval_rows(tmp_path) == [{"condition": "a,b", "single_mean": "0.5"}]

