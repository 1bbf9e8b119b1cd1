import pytest

from clipforget.metrics import ScenarioMetrics, paper_score

ORIGINAL = ScenarioMetrics(51.0, 54.7, {"imagenet": 59.8, "cifar": 70.4, "food": 60.9, "stl": 92.0, "objectnet": 68.9})


@pytest.mark.parametrize(
    "row, expected",
    [
        ((0.0, 0.9, 32.2, 16.4, 22.9, 63.3, 22.1), 45.3),  # GA
        ((0.0, 56.7, 28.4, 13.1, 20.4, 54.9, 20.5), 55.6),  # EMMN
        ((0.7, 0.2, 1.3, 10.7, 0.2, 10.3, 1.6), 18.6),  # LIP
        ((0.0, 50.2, 54.5, 85.7, 62.9, 81.5, 45.2), 91.0),  # the paper's method
    ],
)
def test_score_reproduces_the_papers_main_table(row, expected):
    t, r, *held = row
    m = ScenarioMetrics(t, r, dict(zip(ORIGINAL.heldout, held)))
    assert paper_score(m, ORIGINAL) == pytest.approx(expected, abs=0.05)


def test_score_of_the_original_model_is_the_utility_only_share():
    assert paper_score(ORIGINAL, ORIGINAL) == pytest.approx(100 * 6 / 7)


def test_score_refuses_mismatched_columns():
    with pytest.raises(ValueError, match="different columns"):
        paper_score(ScenarioMetrics(0, 1, {"a": 1.0}), ScenarioMetrics(1, 1, {"b": 1.0}))
