import pytest

from seal.shared.graders import contains, exact_match, f1, get_grader, normalize


def test_normalize_follows_squad():
    assert normalize("The  Grey-Wren!") == "greywren"
    assert normalize("An apple, a pear") == "apple pear"


def test_exact_match():
    assert exact_match("the Grey Wren.", "Grey Wren") == 1.0
    assert exact_match("Grey Wren ferry", "Grey Wren") == 0.0


def test_f1_partial_credit():
    assert f1("Hesper Quill", "Hesper Quill") == 1.0
    assert f1("Hesper", "Hesper Quill") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1("nothing", "Hesper Quill") == 0.0
    assert f1("", "") == 1.0


def test_contains_needs_whole_words():
    assert contains("It was built in 1874 by Quill.", "1874") == 1.0
    assert contains("in 18745", "1874") == 0.0
    assert contains("anything", "") == 0.0


def test_unknown_grader():
    with pytest.raises(ValueError, match="unknown grader 'judge'"):
        get_grader("judge")
