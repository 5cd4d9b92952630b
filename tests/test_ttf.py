"""rig.runs.ttf: the exponential time-to-failure model, its exact interval and the soak for 'good' (pure)."""

from __future__ import annotations

import math
import random

import pytest

from rig.errors import ConfigError
from rig.runs import bisect
from rig.runs.ttf import (
    analyse,
    fit_rate,
    poisson_cdf,
    poisson_mean_interval,
    rate_interval,
    required_soak,
)

#: Garwood limits from published chi-square quantiles (half of chi2(0.025; 2k) and chi2(0.975; 2k+2)).
#: chi2(0.975; 2) = 7.3778, chi2(0.025; 2) = 0.05064, chi2(0.975; 4) = 11.1433, chi2(0.025; 10) = 3.2470,
#: chi2(0.975; 12) = 23.3367, chi2(0.025; 20) = 9.5908, chi2(0.975; 22) = 36.7807.
TABLE_95 = {0: (0.0, 3.6889), 1: (0.02532, 5.5716), 5: (1.6235, 11.6683), 10: (4.7954, 18.3904)}


@pytest.mark.parametrize("k", sorted(TABLE_95))
def test_interval_matches_the_chi_square_table(k: int) -> None:
    low, high = poisson_mean_interval(k, 0.95)
    want_low, want_high = TABLE_95[k]
    assert low == pytest.approx(want_low, rel=2e-4, abs=1e-9)
    assert high == pytest.approx(want_high, rel=2e-4)


def test_no_failure_upper_limit_is_minus_log_of_half_alpha() -> None:
    assert poisson_mean_interval(0, 0.9)[1] == pytest.approx(-math.log(0.05), rel=1e-9)


def test_poisson_cdf_against_the_direct_sum() -> None:
    mu = 7.3
    direct = sum(math.exp(-mu) * mu**i / math.factorial(i) for i in range(6))
    assert poisson_cdf(5, mu) == pytest.approx(direct, rel=1e-12)
    assert poisson_cdf(-1, mu) == 0.0 and poisson_cdf(3, 0.0) == 1.0


def test_interval_covers_the_true_rate_at_least_as_often_as_asked() -> None:
    """Garwood's interval is exact-conservative: over seeded Poisson draws it covers >= the level."""
    rng = random.Random(19)
    for mu in (0.7, 3.0, 12.0):
        covered = 0
        trials = 600
        for _ in range(trials):
            # a Poisson draw by counting exponential gaps in [0, mu]
            k, t = 0, rng.expovariate(1.0)
            while t <= mu:
                k, t = k + 1, t + rng.expovariate(1.0)
            low, high = poisson_mean_interval(k, 0.9)
            covered += low <= mu <= high
        assert covered / trials >= 0.9 - 0.03, (mu, covered)  # 0.03: the binomial noise of 600 draws


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.95, 0.999])
def test_interval_brackets_the_count_and_widens_with_the_level(confidence: float) -> None:
    for k in range(61):
        low, high = poisson_mean_interval(k, confidence)
        assert 0.0 <= low <= k <= high, (k, low, high)
        wider = poisson_mean_interval(k, confidence + (1 - confidence) / 2)
        assert wider[0] < low + 1e-9 and wider[1] > high - 1e-9, (k, confidence)


def test_analyse_censors_survivors_and_gives_the_soak_for_good() -> None:
    s = analyse([(100.0, True), (300.0, True), (600.0, False)], 0.95)
    assert s.times_to_failure == (100.0, 300.0) and s.censored == (600.0,)
    assert s.failures == 2 and s.exposure == 1000.0
    assert s.rate == pytest.approx(2 / 1000)
    assert (s.rate_low, s.rate_high) == pytest.approx(rate_interval(2, 1000.0, 0.95))
    assert s.rate_low < s.rate < s.rate_high
    # bisect's rule: the predictive soak, (1000 / (1000 + T)) ** 2 = 0.05, longer than the MLE's
    assert s.soak_for_good() == pytest.approx(1000.0 * (0.05 ** -0.5 - 1.0))
    assert s.soak_for_good() > required_soak(2 / 1000, 0.95)  # type: ignore[operator]
    conservative = s.soak_for_good_conservative()
    assert conservative is not None and conservative > s.soak_for_good()  # type: ignore[operator]
    j = s.to_json()
    assert j["times_to_failure"] == [100.0, 300.0] and j["censored_seconds"] == [600.0]
    assert j["mean_time_to_failure"] == 500.0
    lo, hi = j["mean_time_to_failure_interval"]
    assert lo < 500.0 < hi
    assert "2 failure(s) in 1000 s" in s.summary() and "1 survived" in s.summary()


def test_analyse_without_a_failure_bounds_the_rate_from_above_only() -> None:
    s = analyse([(600.0, False), (600.0, False)], 0.95)
    assert s.rate is None and s.rate_low == 0.0
    assert s.rate_high == pytest.approx(3.6889 / 1200, rel=1e-4)
    assert s.soak_for_good() is None and s.soak_for_good_conservative() is None
    assert s.to_json()["mean_time_to_failure_interval"][1] is None
    assert "no failure in 2 soak(s)" in s.summary()


def test_bad_confidence_is_a_config_error() -> None:
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="confidence"):
            analyse([(1.0, True)], bad)


def test_bisect_uses_the_one_owner() -> None:
    assert bisect.fit_rate is fit_rate and bisect.required_soak is required_soak
    assert fit_rate([(0.0, True)]) == 1.0  # crashed while loading: at least one second of exposure


def test_planning_rate_survival_matches_the_predictive_probability_and_tends_to_the_mle() -> None:
    from rig.runs.ttf import planning_rate

    for n, e, c in [(1, 10.0, 0.95), (2, 4.2, 0.99), (5, 30.0, 0.9)]:
        t = required_soak(planning_rate(n, e, c), c)
        assert (e / (e + t)) ** n == pytest.approx(1 - c)  # a commit as bad survives the soak with 1 - c
        assert planning_rate(n, e, c) < n / e  # never shorter than the MLE's soak
    assert planning_rate(10_000, 10_000.0, 0.95) == pytest.approx(1.0, rel=1e-3)
