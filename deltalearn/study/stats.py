"""Paired score comparisons: how much of a score difference the episodes can resolve.

Two variants of an agent that play the same seeded episodes give one difference per
episode. Their mean, its standard error and a t-based confidence interval say whether a
loss was detected and, when none was, how large a loss the episodes would have shown. The
unpaired standard error is reported beside the paired one: pairing only helps when the two
runs stay coupled, and in Atari they part ways after the first differing action.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["PairedDifference", "paired_difference", "episodes_for_floor"]


@dataclass(frozen=True)
class PairedDifference:
    """Score of ``other`` minus score of ``base`` on the same episodes."""

    episodes: int
    """Number of paired episodes."""
    mean_difference: float
    """Mean of (other - base) over the episodes."""
    paired_se: float
    """Standard error of that mean from the per-episode differences."""
    unpaired_se: float
    """Standard error if the two score lists were independent samples (for comparison)."""
    level: float
    """Confidence level of the interval, e.g. 0.95."""
    ci_low: float
    """Lower end of the t interval for the mean difference."""
    ci_high: float
    """Upper end of the t interval for the mean difference."""
    base_mean: float
    """Mean score of the base variant, to express a difference as a share of it."""

    @property
    def verdict(self) -> str:
        """``loss detected``, ``gain detected``, ``no loss detected`` (the interval holds 0), or
        ``the same score in every episode`` (no spread to build an interval from)."""
        if self.paired_se == 0 and self.mean_difference == 0:
            return "the same score in every episode"
        if self.ci_high < 0:
            return "loss detected"
        if self.ci_low > 0:
            return "gain detected"
        return "no loss detected"

    @property
    def largest_unseen_loss(self) -> float:
        """The largest loss the interval leaves possible (``-ci_low``, at least 0): a larger
        loss would have put the whole interval below zero, so it would have been seen."""
        return max(0.0, -self.ci_low)

    def sentence(self, unit: str = "points") -> str:
        """One sentence for a table's reader, e.g. 'no loss detected; a loss larger than 4.1
        points (10% of the dense score) would have been seen (95% interval -4.1 to +6.0, 30 paired episodes)'."""
        if self.verdict == "the same score in every episode":
            return f"the same score in every one of the {self.episodes} paired episodes"
        ci = f"{self.level:.0%} interval {self.ci_low:+.3g} to {self.ci_high:+.3g}, {self.episodes} paired episodes"
        if self.verdict != "no loss detected":
            return f"{self.verdict}: {self.mean_difference:+.3g} {unit} ({ci})"
        share = f" ({self.largest_unseen_loss / abs(self.base_mean):.0%} of the dense score)" if self.base_mean else ""
        return (f"no loss detected; a loss larger than {self.largest_unseen_loss:.3g} {unit}{share} "
                f"would have been seen ({ci})")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "largest_unseen_loss": self.largest_unseen_loss}


def paired_difference(base: Sequence[float], other: Sequence[float], level: float = 0.95) -> PairedDifference:
    """``other - base`` over episodes both played: the mean difference, its paired standard error and
    the ``level`` t interval (scipy's ``ttest_rel(other, base).confidence_interval``).

    The one place the book's paired statistics are computed: tables, summaries and chapters call it.
    """
    a, b = np.asarray(base, float), np.asarray(other, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two lists of equal length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired interval needs at least 2 episodes, got {len(a)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(a)
    d = b - a
    se = float(d.std(ddof=1) / np.sqrt(n))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * se
    unpaired = float(np.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n))
    return PairedDifference(n, float(d.mean()), se, unpaired, level, float(d.mean()) - half,
                            float(d.mean()) + half, float(a.mean()))


def episodes_for_floor(sd: float, floor: float, power: float = 0.8, level: float = 0.95) -> int:
    """Paired episodes a setting with no true loss needs for its interval's lower end to clear ``floor``
    with probability ``power``: the smallest n with ``|floor| / (sd / sqrt(n)) >= t(level, n - 1) + z(power)``.

    ``sd`` is the standard deviation of the per-episode differences (``paired_se * sqrt(episodes)``).
    A rule such as "the lower end is above -15% of the dense mean" can only be met reliably with about
    this many episodes, whatever the setting: below it, a verdict at the floor is close to a coin toss.
    """
    if not sd >= 0 or not np.isfinite(sd):
        raise ValueError(f"sd must be a finite number >= 0, got {sd!r}")
    if not floor < 0:
        raise ValueError(f"floor must be below 0 (an allowed loss), got {floor!r}")
    if not 0 < power < 1 or not 0 < level < 1:
        raise ValueError(f"power and level must be in (0, 1), got {power!r} and {level!r}")
    if sd == 0:
        return 2
    z = float(_st.norm.ppf(power))
    n = 2
    while abs(floor) * np.sqrt(n) / sd < float(_st.t.ppf(0.5 + level / 2, n - 1)) + z:
        n += 1
    return n
