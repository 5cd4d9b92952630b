"""Time to failure of an intermittent hang: the exponential model, its exact interval, the soak it asks for.

Why one module: ``rig bisect`` (the bad ref's attempts decide how long a 'good' soak must be), the
device report (several soaks of one build) and the lab's own check of sbsim's host-residency model
all read the same few numbers from ``(exposure seconds, failed)`` pairs. Pure, no I/O.

The model: an NMI hang strikes when an NMI lands while a CPU is in the host (VMX root), so with a
steady NMI rate the failures form a Poisson process of rate ``lambda`` and the time to the first
is exponential. With ``k`` failures in a total exposure ``T`` (survivors right-censored: they add
exposure, not failures), the maximum-likelihood rate is ``k / T``. Its exact two-sided interval
at level ``c`` is Garwood's (time-terminated testing): ``chi2(a/2; 2k) / 2T`` to
``chi2(1 - a/2; 2k + 2) / 2T`` with ``a = 1 - c``. Both chi-square quantiles have even degrees of
freedom, where the chi-square CDF is a finite Poisson sum, so they are found here by bisection on
that sum: exact, and no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rig.errors import ConfigError

#: Exposure counted at least, so a failure at 0 s (a crash while loading) still gives a finite rate.
MIN_EXPOSURE = 1.0


def _check_confidence(confidence: float, what: str = "--confidence") -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"{what} {confidence}: give a probability between 0 and 1, e.g. 0.95")


def fit_rate(attempts: list[tuple[float, bool]]) -> float | None:
    """Exponential MLE of the failure rate from ``(exposure seconds, failed)`` pairs; None without a failure.

    Survivors are right-censored: they add exposure, not failures. A failure at 0 s (a crash while
    loading) still needs some exposure to give a finite rate: at least one second is counted.
    """
    failures = sum(1 for _, failed in attempts if failed)
    if failures == 0:
        return None
    exposure = max(sum(max(0.0, e) for e, _ in attempts), MIN_EXPOSURE)
    return failures / exposure


def required_soak(rate: float, confidence: float) -> float:
    """Seconds ``T`` with ``exp(-rate*T) = 1 - confidence``: a commit as bad as the bad ref survives that rarely."""
    _check_confidence(confidence)
    if rate <= 0:
        raise ConfigError("failure rate must be positive")
    return -math.log(1.0 - confidence) / rate


def planning_rate(failures: int, exposure: float, confidence: float) -> float:
    """The failure rate ``rig bisect`` plans its 'good' soaks with: the bad ref's measured rate, with the
    uncertainty of measuring it from few failures included.

    Why not the MLE ``failures / exposure``: from two failures it is often several times too high (two
    quick hangs by chance), and a soak of ``-ln(1-c)/rate`` then lets a commit as bad survive far more
    often than ``1-c`` (seen: a bad-ref MTTF of 2.1 s measured against a true 5 s, a 9.7 s soak, the
    culprit called good). With a Gamma(failures, exposure) belief over the rate (flat prior), a commit
    as bad survives ``T`` seconds with probability ``(E / (E + T)) ** n``; the soak with that equal to
    ``1 - c`` is ``T = E * ((1 - c) ** (-1 / n) - 1)``, and this returns the exponential rate that gives
    the same ``T`` through :func:`required_soak`. It tends to the MLE as failures accumulate.
    """
    _check_confidence(confidence)
    if failures <= 0:
        raise ConfigError("planning a soak needs at least one failure of the bad ref")
    exposure = max(exposure, MIN_EXPOSURE)
    soak = exposure * ((1.0 - confidence) ** (-1.0 / failures) - 1.0)
    return -math.log(1.0 - confidence) / soak


def survival_confidence(rate: float, seconds: float) -> float:
    """Confidence in 'good' after surviving ``seconds``: 1 - P(a commit as bad as the bad ref survives that long)."""
    return 1.0 - math.exp(-rate * max(0.0, seconds))


def poisson_cdf(k: int, mu: float) -> float:
    """P(N <= k) for N ~ Poisson(mu), summed in log space (stable for the counts a soak gives)."""
    if k < 0:
        return 0.0
    if mu <= 0:
        return 1.0
    log_mu = math.log(mu)
    terms = [i * log_mu - mu - math.lgamma(i + 1) for i in range(k + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _solve_mean(k: int, target: float) -> float:
    """The Poisson mean ``mu`` with ``P(N <= k; mu) = target`` (decreasing in mu), by bisection."""
    lo, hi = 0.0, max(10.0, 4.0 * (k + 1))
    while poisson_cdf(k, hi) > target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if poisson_cdf(k, mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def poisson_mean_interval(failures: int, confidence: float) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval for the mean count of a Poisson variable that came out ``failures``.

    ``low`` solves P(N >= k; low) = a/2 (0 when k = 0), ``high`` solves P(N <= k; high) = a/2;
    equal to ``chi2(a/2; 2k)/2`` and ``chi2(1-a/2; 2k+2)/2``.
    """
    _check_confidence(confidence, "confidence")
    if failures < 0:
        raise ValueError(f"failures must be >= 0, not {failures}")
    alpha = 1.0 - confidence
    low = 0.0 if failures == 0 else _solve_mean(failures - 1, 1.0 - alpha / 2)
    high = _solve_mean(failures, alpha / 2)
    return low, high


def rate_interval(failures: int, exposure: float, confidence: float) -> tuple[float, float]:
    """Exact interval for the failure rate (per second) from ``failures`` in ``exposure`` seconds."""
    low, high = poisson_mean_interval(failures, confidence)
    t = max(exposure, MIN_EXPOSURE)
    return low / t, high / t


@dataclass(frozen=True)
class TimeToFailure:
    """What several soaks of one build say about its hang: the report's 'time to hang' block."""

    times_to_failure: tuple[float, ...]  # seconds of NMIs until each failure
    censored: tuple[float, ...]  # seconds of NMIs of each soak that survived
    confidence: float
    rate: float | None  # MLE per second; None without a failure
    rate_low: float  # exact interval at ``confidence``
    rate_high: float

    @property
    def failures(self) -> int:
        return len(self.times_to_failure)

    @property
    def exposure(self) -> float:
        return sum(self.times_to_failure) + sum(self.censored)

    def soak_for_good(self, confidence: float | None = None) -> float | None:
        """The soak a 'good' verdict needs at ``confidence``, the fitted rate's uncertainty included
        (bisect's rule: :func:`planning_rate`)."""
        if self.rate is None:
            return None
        c = confidence or self.confidence
        return required_soak(planning_rate(self.failures, self.exposure, c), c)

    def soak_for_good_conservative(self, confidence: float | None = None) -> float | None:
        """The same against the interval's lowest rate: long enough even if the build is that rarely bad."""
        return None if self.rate_low <= 0 else required_soak(self.rate_low, confidence or self.confidence)

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None, nd: int = 1) -> float | None:
            return None if x is None else round(x, nd)

        mttf = None if self.rate is None else 1 / self.rate
        return {
            "model": "exponential, MLE failures / total exposure (survivors censored); exact Garwood interval",
            "times_to_failure": [r(t) for t in self.times_to_failure],
            "censored_seconds": [r(t) for t in self.censored],
            "failures": self.failures,
            "exposure_seconds": r(self.exposure),
            "confidence": self.confidence,
            "rate_per_second": self.rate,
            "rate_interval": [self.rate_low, self.rate_high],
            "mean_time_to_failure": r(mttf),
            "mean_time_to_failure_interval": [
                r(1 / self.rate_high) if self.rate_high > 0 else None,
                r(1 / self.rate_low) if self.rate_low > 0 else None,  # None: unbounded (no failure)
            ],
            "soak_for_good_seconds": r(self.soak_for_good()),
            "soak_for_good_conservative_seconds": r(self.soak_for_good_conservative()),
        }

    def summary(self) -> str:
        """One line for a terminal or a report."""
        if self.rate is None:
            return (f"no failure in {len(self.censored)} soak(s), {self.exposure:.0f} s of NMIs: rate below "
                    f"{self.rate_high * 3600:.3g}/h at {self.confidence:g}")  # fmt: skip
        good = self.soak_for_good()
        return (
            f"{self.failures} failure(s) in {self.exposure:.0f} s of NMIs ({len(self.censored)} survived): "
            f"mean time to failure {1 / self.rate:.0f} s, rate {self.rate * 3600:.3g}/h "
            f"[{self.rate_low * 3600:.3g}, {self.rate_high * 3600:.3g}] at {self.confidence:g}; "
            f"a 'good' needs {good:.0f} s"
        )


def analyse(attempts: list[tuple[float, bool]], confidence: float = 0.95) -> TimeToFailure:
    """The :class:`TimeToFailure` of ``(exposure seconds, failed)`` pairs at ``confidence``."""
    _check_confidence(confidence)
    ttf = tuple(max(0.0, e) for e, failed in attempts if failed)
    cens = tuple(max(0.0, e) for e, failed in attempts if not failed)
    low, high = rate_interval(len(ttf), sum(ttf) + sum(cens), confidence)
    return TimeToFailure(ttf, cens, confidence, fit_rate(list(attempts)), low, high)
