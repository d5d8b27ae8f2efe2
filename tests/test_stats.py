"""Paired differences: the interval is scipy's paired t interval, and the verdicts follow it."""
import numpy as np
import pytest
from scipy import stats

import deltalearn as dl


def test_a_case_worked_by_hand():
    # differences 1, 3, -1, 1: mean 1, sample variance 8/3, so the standard error is sqrt(2/3);
    # t(0.975, 3 degrees of freedom) = 3.182446305284263 from a t table
    c = dl.paired_difference([10, 10, 10, 10], [11, 13, 9, 11])
    se = np.sqrt(2 / 3)
    assert (c.episodes, c.mean_difference, c.base_mean) == (4, 1.0, 10.0)
    assert c.paired_se == pytest.approx(se)
    assert (c.ci_low, c.ci_high) == pytest.approx((1 - 3.182446305284263 * se, 1 + 3.182446305284263 * se))
    assert c.unpaired_se == pytest.approx(se)  # the base scores do not vary, so both errors are the other's
    assert c.verdict == "no loss detected" and c.largest_unseen_loss == pytest.approx(-c.ci_low)


def test_interval_equals_scipys_paired_t_interval():
    rng = np.random.default_rng(3)
    base = rng.normal(40, 10, 30)
    other = base + rng.normal(-1, 5, 30)
    for level in (0.9, 0.95, 0.99):
        c = dl.paired_difference(base, other, level)
        ref = stats.ttest_rel(other, base).confidence_interval(level)
        assert (c.ci_low, c.ci_high) == pytest.approx((ref.low, ref.high))
    assert c.mean_difference == pytest.approx(np.mean(other - base))
    assert c.paired_se == pytest.approx(stats.sem(other - base))
    assert c.unpaired_se == pytest.approx(np.sqrt(base.var(ddof=1) / 30 + other.var(ddof=1) / 30))


def test_verdicts_and_the_largest_loss_left_unseen():
    base = np.arange(10.0)
    same = dl.paired_difference(base, base + np.array([1, -1] * 5))
    assert same.verdict == "no loss detected" and same.largest_unseen_loss == pytest.approx(-same.ci_low)
    assert "would have been seen" in same.sentence()
    worse = dl.paired_difference(base, base - 5 + np.array([1, -1] * 5))
    assert worse.verdict == "loss detected" and "loss detected" in worse.sentence()
    same = dl.paired_difference(base, base)
    assert same.verdict == "the same score in every episode" and "every one of the 10" in same.sentence()
    better = dl.paired_difference(base, base + 5 + np.array([1, -1] * 5))
    assert better.verdict == "gain detected" and better.largest_unseen_loss == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="equal length"):
        dl.paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        dl.paired_difference([1], [1])
    with pytest.raises(ValueError, match="level"):
        dl.paired_difference([1, 2], [1, 2], level=95)


def test_episodes_for_floor_gives_the_asked_power_and_not_fewer():
    """With no true loss, n episodes clear the floor about 80% of the time, n - 10 clearly less often:
    measured by simulating the paired interval itself."""
    sd, floor = 1.0, -0.4
    n = dl.study.episodes_for_floor(sd, floor)
    rng = np.random.default_rng(0)

    def share_clearing(m: int, trials: int = 2000) -> float:
        d = rng.normal(0.0, sd, (trials, m))
        return float(np.mean([dl.paired_difference(np.zeros(m), row).ci_low > floor for row in d]))

    assert 45 <= n <= 55  # ((1.96 + 0.84) / 0.4)^2 = 49, a little more with t quantiles
    assert abs(share_clearing(n) - 0.8) < 0.04
    assert share_clearing(n - 10) < 0.74
    assert dl.study.episodes_for_floor(2 * sd, floor) > 3.5 * n  # four times the variance
    assert dl.study.episodes_for_floor(0.0, floor) == 2
    for bad in ({"sd": -1, "floor": -1}, {"sd": 1, "floor": 0.5}, {"sd": 1, "floor": -1, "power": 1.0}):
        with pytest.raises(ValueError):
            dl.study.episodes_for_floor(**bad)
