"""The continual (forgetting) experiment's bookkeeping: matrices, forgetting, the official results file."""

import json
import math

import pytest

from seal.shared import DataError, RunStore
from seal.teacher.continual import ContinualScore, format_matrix, matrices, paper_matrix


def test_matrices_are_lower_triangular_with_row_zero_full_and_report_forgetting(tmp_path):
    store = RunStore(tmp_path, {"seed": 0})
    k = 2
    for n, (fresh, later) in enumerate([(1.0, 0.5), (0.5, 0.0)]):
        for j in range(k):
            store.append("continual_scores", ContinualScore(n, 0, j, f"p{j}", 0.0))
        store.append("continual_scores", ContinualScore(n, 1, 0, "p0", fresh))
        store.append("continual_scores", ContinualScore(n, 2, 0, "p0", later))
        store.append("continual_scores", ContinualScore(n, 2, 1, "p1", fresh))
    result = matrices(store, k, 2)
    assert result["complete"] == 2
    assert result["mean"][1] == [0.75, None] and result["mean"][2] == [0.25, 0.75]
    assert result["std"][1][0] == pytest.approx(math.sqrt(0.125))
    first = result["forgetting"][0]
    assert first["right_after"] == 1.0 and first["after_all"] == 0.75 and first["drop"] == 0.25
    assert "| 1 | 75.0 ± 35.4 |  |" in format_matrix(result["mean"], result["std"])


def test_an_unfinished_sequence_is_left_out_of_the_mean(tmp_path):
    store = RunStore(tmp_path, {"seed": 0})
    store.append("continual_scores", ContinualScore(0, 0, 0, "p0", 0.5))
    assert matrices(store, 1, 1)["complete"] == 0


def test_the_official_results_file_is_read_with_its_upper_triangle_blank(tmp_path):
    path = tmp_path / "overall_results.json"
    path.write_text(json.dumps({"mean_over_sequences": [[0.33, 0.32], [0.38, 0.0], [0.36, 0.50]],
                                "n_sequences": 64, "n_datapoints": 2}))
    assert paper_matrix(str(path)) == [[0.33, 0.32], [0.38, None], [0.36, 0.50]]
    path.write_text("{}")
    with pytest.raises(DataError, match="not the official overall_results.json"):
        paper_matrix(str(path))


def test_forgetting_rows_name_their_sequence_and_the_result_file_is_strict_json(tmp_path):
    """With sequence 0 unfinished, sequences 1 and 2 were printed as 0 and 1; one finished sequence has
    no standard deviation, which json.dumps wrote as a bare NaN that strict readers refuse."""
    from seal.teacher.continual import format_forgetting

    store = RunStore(tmp_path, {"seed": 0})
    store.append("continual_scores", ContinualScore(0, 0, 0, "p0", 0.0))  # sequence 0: row 1 missing
    for n in (1, 2):
        store.append("continual_scores", ContinualScore(n, 0, 0, "p0", 0.0))
        store.append("continual_scores", ContinualScore(n, 1, 0, "p0", 0.5 * n))
    result = matrices(store, 1, 3)
    assert [r["sequence"] for r in result["forgetting"]] == [1, 2]
    table = format_forgetting(result).splitlines()
    assert table[2].startswith("| 1 | 50.0 |") and table[3].startswith("| 2 | 100.0 |")
    store.append("continual_scores", ContinualScore(0, 1, 0, "p0", 1.0))
    path = store.write_json("continual.json", matrices(store, 1, 1))  # one sequence: std NaN
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert data["std"][1][0] is None and data["mean"][1][0] == 1.0
