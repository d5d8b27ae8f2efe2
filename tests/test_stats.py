"""Paired comparisons: the interval is scipy's paired t interval, and the verdicts follow it."""
import numpy as np
import pytest
from scipy import stats

import deltalearn as dl


def test_interval_equals_scipys_paired_t_interval():
    rng = np.random.default_rng(3)
    base = rng.normal(40, 10, 30)
    other = base + rng.normal(-1, 5, 30)
    c = dl.paired_comparison(base, other)
    ref = stats.ttest_rel(other, base).confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((ref.low, ref.high))
    assert c.mean_difference == pytest.approx(np.mean(other - base))
    assert c.paired_se == pytest.approx(np.std(other - base, ddof=1) / np.sqrt(30))
    assert c.unpaired_se == pytest.approx(np.sqrt(base.var(ddof=1) / 30 + other.var(ddof=1) / 30))


def test_verdicts_and_the_largest_loss_left_unseen():
    base = np.arange(10.0)
    same = dl.paired_comparison(base, base + np.array([1, -1] * 5))
    assert same.verdict == "no loss detected" and same.largest_unseen_loss == pytest.approx(-same.ci_low)
    assert "would have been seen" in same.sentence()
    worse = dl.paired_comparison(base, base - 5 + np.array([1, -1] * 5))
    assert worse.verdict == "loss detected" and "loss detected" in worse.sentence()
    same = dl.paired_comparison(base, base)
    assert same.verdict == "the same score in every episode" and "every one of the 10" in same.sentence()
    better = dl.paired_comparison(base, base + 5 + np.array([1, -1] * 5))
    assert better.verdict == "gain detected" and better.largest_unseen_loss == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="equal length"):
        dl.paired_comparison([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        dl.paired_comparison([1], [1])
    with pytest.raises(ValueError, match="level"):
        dl.paired_comparison([1, 2], [1, 2], level=95)
