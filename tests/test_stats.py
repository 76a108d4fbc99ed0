"""hacnn.stats: seed summaries and paired differences against hand-worked values."""
import math

import pytest

from hacnn.stats import paired_difference, summarize


def test_summarize_hand_worked():
    s = summarize([2.0, 3.0, 4.0])
    assert (s.mean, s.sd, s.n) == (3.0, 1.0, 3)
    assert summarize([5.0]).sd == 0.0
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_paired_difference_hand_worked():
    # d = (2, 3, 4): mean 3, sd 1; t_{0.975, 2} = 4.302653 -> half width 4.302653 / sqrt(3)
    d = paired_difference([3, 5, 7], [1, 2, 3])
    half = 4.302652729911275 / math.sqrt(3)
    assert d.mean == 3.0 and d.n == 3
    assert d.low == pytest.approx(3 - half, abs=1e-9) and d.high == pytest.approx(3 + half, abs=1e-9)
    assert d.significant and str(d) == "+3.0 [+0.5, +5.5]"


def test_paired_difference_is_paired_not_pooled():
    # the seed effect (+10 per seed on both arms) cancels in a paired test
    a, b = [10.0, 20.0, 30.0, 40.0], [9.0, 19.1, 28.9, 39.0]
    d = paired_difference(a, b)
    assert d.significant and d.low > 0.5
    assert not paired_difference([1, 2], [2, 1]).significant      # mean 0: no finding


def test_paired_difference_one_seed_and_bad_input():
    d = paired_difference([3.0], [1.0])
    assert d.mean == 2.0 and math.isnan(d.low) and not d.significant
    assert "no interval" in str(d)
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="level"):
        paired_difference([1, 2], [0, 1], level=1.5)
