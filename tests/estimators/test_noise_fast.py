"""The one-draw Sum-of-Gamma samplers against exact oracles and the term-by-term sampler.

Oracles: the mixing count K as a convolution of SciPy negative binomials; the SoG CDF as the
mixture Σ_j P(K = j)·P(s/k + j, s·y) of regularised incomplete gammas (checked against the
term-by-term sampler too), and its quantiles by SciPy's root finder; exact cumulants
κ_r = (1/k)·(r−1)!·Σ_i i^{−r}; SciPy's Gamma.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from aimle_zoo.estimators import SumOfGamma, make_noise
from aimle_zoo.estimators.noise import (
    _clear_table_caches,
    _interpolate_quantiles,
    _marsaglia_tsang,
    _mixing_alias_table,
    _quantile_table,
    _quantile_tensors,
)

METHODS = ["quantile", "mixture", "terms"]

CASES = [(10.0, 10), (15.0, 10), (2.5, 7), (3.0, 1), (0.5, 4)]  # s/k = 1, < 1, > 1, s = 1


def _draw(noise: SumOfGamma, count: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return noise.sample((count,), dtype=torch.float64, generator=generator).numpy()


def _mixing_pmf_oracle(k: float, terms: int, length: int) -> np.ndarray:
    """P(K = j), j < length, K = Σ_{i<s} N_i with N_i ~ NegBin(1/k, i/s) (SciPy, convolved)."""
    support = np.arange(length)
    pmf = np.zeros(length)
    pmf[0] = 1.0
    for i in range(1, terms):
        pmf = np.convolve(pmf, stats.nbinom(1.0 / k, i / terms).pmf(support))[:length]
    return pmf


def _alias_pmf(accept: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The pmf an alias table samples: (accept_j + Σ_{i: alias_i = j} (1 − accept_i)) / m."""
    size = len(accept)
    return (accept + np.bincount(alias, weights=1.0 - accept, minlength=size)) / size


def _sog_cdf(k: float, terms: int, upper: bool = False) -> object:
    """Exact CDF (or survival function) of ε = Σ_i G_i/i − log(s)/k as the Gamma mixture."""
    pmf = _mixing_pmf_oracle(k, terms, 600 if terms > 1 else 1)
    shapes = terms / k + np.arange(len(pmf))
    regularised = special.gammaincc if upper else special.gammainc

    def cdf(x: np.ndarray) -> np.ndarray:
        y = np.clip(np.asarray(x, dtype=np.float64) + math.log(terms) / k, 0.0, None)
        return pmf @ regularised(shapes[:, None], terms * y[None, :])

    return cdf


def _sog_quantile(k: float, terms: int, logit: float) -> float:
    """The ε whose CDF F has log F − log(1 − F) = ``logit`` (SciPy's Brent root finder)."""
    cdf, survival = _sog_cdf(k, terms), _sog_cdf(k, terms, upper=True)
    shift = math.log(terms) / k

    def residual(log_x: float) -> float:
        x = np.array([math.exp(log_x) - shift])
        with np.errstate(divide="ignore"):  # log 0 = −inf at the bracket's far end
            return float(np.log(cdf(x)[0]) - np.log(survival(x)[0])) - logit

    log_x = optimize.brentq(residual, -400.0, 5.0, xtol=1e-14, rtol=1e-14)
    return math.exp(log_x) - shift


@pytest.mark.parametrize(("k", "terms"), [*CASES, (1.0, 30)])
def test_mixing_count_table_matches_a_negative_binomial_convolution(k: float, terms: int) -> None:
    accept, alias = _mixing_alias_table(k, terms)
    table = _alias_pmf(accept, alias)
    oracle = _mixing_pmf_oracle(k, terms, len(table))
    assert table.sum() == pytest.approx(1.0, abs=1e-12)
    assert oracle.sum() == pytest.approx(1.0, abs=1e-12)  # the table keeps the whole mass
    np.testing.assert_allclose(table, oracle, rtol=0, atol=1e-14)
    if terms > 1:  # P(K = 0) = Π_i (i/s)^{1/k}
        expected = math.exp(sum(math.log(i / terms) for i in range(1, terms)) / k)
        assert table[0] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("k", "terms"), CASES)
@pytest.mark.parametrize("method", METHODS)
def test_all_samplers_follow_the_exact_distribution(k: float, terms: int, method: str) -> None:
    draws = _draw(SumOfGamma(k, terms, method=method), 20_000, seed=11)
    assert stats.kstest(draws, _sog_cdf(k, terms)).pvalue > 1e-3


def test_the_exact_cdf_oracle_rejects_a_wrong_distribution() -> None:
    """The CDF test can fail: SoG(10, 10) draws are far from SoG(15, 10)'s CDF."""
    draws = _draw(SumOfGamma(10.0, 10), 20_000, seed=11)
    assert stats.kstest(draws, _sog_cdf(15.0, 10)).pvalue < 1e-6


@pytest.mark.parametrize(
    ("k", "terms", "method"),
    [
        (10.0, 10, "quantile"),
        (10.0, 10, "mixture"),
        (13.0, 100, "mixture"),
        (13.0, 100, "quantile"),
        (0.05, 10, "mixture"),
        (0.05, 10, "quantile"),
    ],
)
def test_cumulants_and_two_sample_agreement(k: float, terms: int, method: str) -> None:
    """Mean, variance and third cumulant within 5 standard errors; two-sample KS with the
    term-by-term sampler (s = 100 is beyond the CDF oracle's reach). At k = 0.05 the mixing
    count K has mean 386: its table must reach far beyond the q_1^m < 1e-20 cut alone."""
    alpha, count = 1.0 / k, 400_000
    draws = _draw(SumOfGamma(k, terms, method=method), count, seed=5)
    power = [sum(i**-r for i in range(1, terms + 1)) for r in range(5)]
    mean = alpha * power[1] - math.log(terms) / k
    k2, k3, k4 = alpha * power[2], 2 * alpha * power[3], 6 * alpha * power[4]
    assert draws.mean() == pytest.approx(mean, abs=5 * math.sqrt(k2 / count))
    assert stats.kstat(draws, 2) == pytest.approx(k2, abs=5 * math.sqrt((k4 + 2 * k2**2) / count))
    assert stats.kstat(draws, 3) == pytest.approx(k3, rel=0.1)
    reference = _draw(SumOfGamma(k, terms, method="terms"), 50_000, seed=6)
    assert stats.ks_2samp(draws[:50_000], reference).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_marsaglia_tsang_draws_match_scipy_gamma(dtype: torch.dtype) -> None:
    shapes = (1.0, 2.5, 40.0)
    count = 20_000
    concentration = torch.tensor(shapes, dtype=dtype).repeat_interleave(count)
    generator = torch.Generator().manual_seed(3)
    draws = _marsaglia_tsang(concentration, generator).double().numpy().reshape(3, count)
    for shape, row in zip(shapes, draws, strict=True):
        assert stats.kstest(row, stats.gamma(shape).cdf).pvalue > 1e-3
    wrong = stats.gamma(shapes[0] * 1.05).cdf
    assert stats.kstest(draws[0], wrong).pvalue < 1e-3


@pytest.mark.parametrize(("k", "terms"), [(10.0, 10), (15.0, 10), (2.5, 7), (3.0, 1), (40.0, 10)])
def test_quantile_table_is_within_its_tolerance_of_the_exact_quantiles(
    k: float, terms: int
) -> None:
    """The float32 table, interpolated at random logits, against SciPy quantiles of the exact
    CDF: within 1e-6 standard deviations (the tolerance the table is built to), from the
    far left tail (ε ≈ −log(s)/k) to the right tail."""
    start, step, values = _quantile_table(k, terms, 17.0)
    standard_deviation = math.sqrt(sum(1.0 / (k * i * i) for i in range(1, terms + 1)))
    logits = np.random.default_rng(0).uniform(-17.0, 17.0, 40)
    table = np.interp(logits, start + step * np.arange(len(values)), values)
    exact = np.array([_sog_quantile(k, terms, logit) for logit in logits])
    np.testing.assert_allclose(table, exact, rtol=0, atol=1.05e-6 * standard_deviation)
    assert not np.allclose(table, exact + 1e-4 * standard_deviation, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantile_sampler_maps_the_uniform_extremes_to_finite_tail_values(
    dtype: torch.dtype,
) -> None:
    """U = 0 (which torch.rand can return) gives the table's first value, the largest
    uniform below 1 a right-tail value; interpolation is monotone in U (U = 0 and 2^-24 may
    round to the same float32 value: ε differs from its minimum −log(s)/k by about 1e-8)."""
    table = _quantile_tensors(10.0, 10, torch.device("cpu"), dtype)
    tiny = torch.finfo(dtype).eps / 2  # the uniform's resolution, 2^-24 or 2^-53
    uniform = torch.tensor([0.0, tiny, 0.25, 0.5, 0.75, 1.0 - tiny], dtype=dtype)
    noise = _interpolate_quantiles(table, uniform.clone())
    assert torch.isfinite(noise).all()
    assert noise[0] == table.values[0]
    assert (noise.diff() >= 0).all() and (noise[1:].diff() > 0).all()
    median = _sog_quantile(10.0, 10, 0.0)
    assert noise[3].item() == pytest.approx(median, abs=1e-6)
    right_tail = _sog_quantile(10.0, 10, math.log((1.0 - tiny) / tiny))
    assert noise[5].item() == pytest.approx(right_tail, abs=1e-5)


def test_method_is_validated_saved_and_restored() -> None:
    with pytest.raises(
        ValueError, match=r"method must be one of \['quantile', 'mixture', 'terms'\]"
    ):
        SumOfGamma(3, method="table")
    noise = SumOfGamma(2.5, 7, method="terms")
    assert noise.config() == {"name": "sog", "k": 2.5, "iterations": 7, "method": "terms"}
    assert make_noise(noise.config()) == noise
    assert make_noise({"name": "sog", "k": 2.5, "iterations": 7}).method == "quantile"
    assert make_noise({"name": "sog", "k": 2.5, "method": "mixture"}).method == "mixture"
    assert noise != SumOfGamma(2.5, 7)


@pytest.mark.parametrize("method", METHODS)
def test_empty_and_multidimensional_shapes(method: str) -> None:
    noise = SumOfGamma(4, method=method)
    assert noise.sample((0, 3)).shape == (0, 3)
    draws = noise.sample((7, 0, 2), dtype=torch.float64)
    assert draws.shape == (7, 0, 2) and draws.dtype == torch.float64
    grid = noise.sample((50, 4, 3), generator=torch.Generator().manual_seed(0))
    assert grid.shape == (50, 4, 3) and torch.isfinite(grid).all()
    assert grid.std(dim=0).min() > 0  # every position varies independently


@pytest.mark.parametrize(("k", "terms"), [(2e4, 10), (1500.0, 1)])
def test_quantile_sampler_handles_a_large_k(k: float, terms: int) -> None:
    """Large k puts most of X near 0 (y = s·x subnormal where F = 1/2): the table still
    converges, and mean and variance match the exact cumulants within 5 standard errors."""
    count = 200_000
    draws = SumOfGamma(k, terms).sample((count,), generator=torch.Generator().manual_seed(2))
    draws = draws.double().numpy()
    mean = sum(1.0 / (k * i) for i in range(1, terms + 1)) - math.log(terms) / k
    k2 = sum(1.0 / (k * i * i) for i in range(1, terms + 1))
    k4 = 6 * sum(1.0 / (k * i**4) for i in range(1, terms + 1))
    assert draws.mean() == pytest.approx(mean, abs=5 * math.sqrt(k2 / count))
    assert stats.kstat(draws, 2) == pytest.approx(k2, abs=5 * math.sqrt((k4 + 2 * k2**2) / count))


def test_quantile_tables_ignore_the_default_device() -> None:
    """The tables are computed on the CPU even under ``torch.set_default_device``."""
    _clear_table_caches()  # so that the table is built here, not found cached
    torch.set_default_device("meta")
    try:
        draws = SumOfGamma(6.0, 5).sample((4,), device="cpu")
    finally:
        torch.set_default_device(None)
    assert draws.device.type == "cpu" and torch.isfinite(draws).all()
