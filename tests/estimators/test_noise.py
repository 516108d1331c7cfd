"""Noise distributions: moments, distribution tests against SciPy, density gradients, factory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from aimle_zoo.estimators import Gaussian, Gumbel, SumOfGamma, list_noises, make_noise

EULER_GAMMA = 0.5772156649015329


def _draw(noise, shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return noise.sample(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def test_sum_of_gamma_entry_moments() -> None:
    """Mean (H_s − ln s)/k and variance (1/k)·Σ 1/i² of one entry, s = 10, k = 5."""
    k, s = 5.0, 10
    draws = _draw(SumOfGamma(k, s), (200_000,), dtype=torch.float32).numpy().astype(np.float64)
    harmonic = sum(1.0 / i for i in range(1, s + 1))
    mean = (harmonic - math.log(s)) / k
    variance = sum(1.0 / i**2 for i in range(1, s + 1)) / k
    assert mean == pytest.approx(0.6264 / k, abs=1e-4)  # the spec's value for s = 10
    assert draws.mean() == pytest.approx(mean, abs=5 * math.sqrt(variance / draws.size))
    assert draws.var() == pytest.approx(variance, rel=0.04)  # about 4.5 standard errors


def test_sum_of_k_sum_of_gamma_draws_is_nearly_gumbel() -> None:
    """Σ of k i.i.d. SoG(k, s) entries → Gumbel(0, 1) as s grows (here s = 100, k = 4)."""
    k, s, count = 4, 100, 10_000
    total = _draw(SumOfGamma(k, s), (count, k), seed=1, dtype=torch.float32).sum(dim=1).numpy()
    assert total.mean() == pytest.approx(EULER_GAMMA, abs=0.05)
    assert total.var() == pytest.approx(math.pi**2 / 6, rel=0.08)
    assert stats.kstest(total, "gumbel_r").pvalue > 1e-3
    too_few_terms = _draw(SumOfGamma(k, 1), (count, k), seed=1).sum(dim=1).numpy()
    assert stats.kstest(too_few_terms, "gumbel_r").pvalue < 1e-6


@pytest.mark.parametrize(
    ("noise", "reference"),
    [
        (Gumbel(), stats.gumbel_r()),
        (Gumbel(loc=0.5, scale=2.0), stats.gumbel_r(loc=0.5, scale=2.0)),
        (Gaussian(), stats.norm()),
        (Gaussian(scale=0.3), stats.norm(scale=0.3)),
    ],
)
def test_samplers_match_scipy(noise, reference) -> None:
    draws = _draw(noise, (50_000,), seed=2).numpy()
    assert stats.kstest(draws, reference.cdf).pvalue > 1e-3
    assert np.isfinite(draws).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gumbel_tails_and_moments(dtype: torch.dtype) -> None:
    """Mean γ and variance π²/6 on 2·10⁶ draws; float32 tails end where its uniform does."""
    draws = Gumbel().sample((2_000_000,), dtype=dtype, generator=torch.Generator().manual_seed(5))
    assert draws.dtype == dtype and torch.isfinite(draws).all()
    assert abs(draws.double().mean().item() - np.euler_gamma) < 4e-3  # sd of the mean ≈ 9e-4
    assert abs(draws.double().var().item() - np.pi**2 / 6) < 2e-2  # sd of the variance ≈ 4e-3
    tail = stats.gumbel_r.sf(6.0)  # P(ε > 6) ≈ 2.5e-3: the upper tail is drawn, not cut
    assert abs((draws > 6.0).double().mean().item() - tail) < 5 * np.sqrt(tail / 2e6)
    lowest = -np.log(-np.log1p(-(1 - 2.0**-24))) if dtype == torch.float32 else -3.7
    assert draws.min().item() >= lowest - 1e-6


@pytest.mark.parametrize(
    ("noise", "reference"),
    [
        (Gumbel(loc=0.3, scale=1.5), stats.gumbel_r(loc=0.3, scale=1.5)),
        (Gaussian(scale=0.7), stats.norm(scale=0.7)),
    ],
)
def test_density_gradient_is_minus_dlogpdf(noise, reference) -> None:
    points = np.linspace(-2.0, 4.0, 13)
    h = 1e-5
    numeric = -(reference.logpdf(points + h) - reference.logpdf(points - h)) / (2 * h)
    analytic = noise.density_gradient(torch.tensor(points)).numpy()
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_sum_of_gamma_has_no_density_gradient() -> None:
    assert not SumOfGamma(3).has_density_gradient
    with pytest.raises(NotImplementedError, match="use Gaussian or Gumbel"):
        SumOfGamma(3).density_gradient(torch.zeros(2))


@pytest.mark.parametrize("noise", [Gumbel(), SumOfGamma(3), Gaussian()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sample_shape_dtype_and_generator(noise, dtype) -> None:
    first = _draw(noise, (3, 4, 5), seed=3, dtype=dtype)
    again = _draw(noise, (3, 4, 5), seed=3, dtype=dtype)
    other = _draw(noise, (3, 4, 5), seed=4, dtype=dtype)
    assert first.shape == (3, 4, 5) and first.dtype == dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_make_noise_forms_and_round_trip() -> None:
    assert make_noise(None) is None and make_noise("none") is None and make_noise("None") is None
    assert make_noise("gumbel") == make_noise("Gumbel") == Gumbel()  # names ignore case
    assert make_noise("sog", k=5) == SumOfGamma(5)
    assert make_noise({"name": "sog", "k": 5, "iterations": 20}) == SumOfGamma(5, 20)
    gaussian = Gaussian(0.5)
    assert make_noise(gaussian) is gaussian
    for noise in (Gumbel(1.0, 2.0), SumOfGamma(2.5, 7), Gaussian(3.0)):
        assert make_noise(noise.config()) == noise
    assert set(list_noises()) == {"gumbel", "sog", "gaussian", "none"}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: make_noise("gumbell"), ValueError, "Did you mean 'gumbel'"),
        (lambda: make_noise("uniform"), ValueError, "Known noises: gumbel, sog, gaussian"),
        (lambda: make_noise("sog"), ValueError, "needs k"),
        (lambda: make_noise("gumbel", sigma=2), TypeError, "does not accept parameters"),
        (lambda: make_noise(Gumbel(), scale=2), ValueError, "cannot be applied"),
        (lambda: make_noise({"k": 3}), ValueError, "needs a 'name' key"),
        (lambda: make_noise(None, k=3), ValueError, "takes no parameters"),
        (lambda: make_noise(3), TypeError, "noise must be"),
        (lambda: SumOfGamma(0), ValueError, "k must be a finite positive number"),
        (lambda: SumOfGamma(3, 0), ValueError, "iterations must be an integer >= 1"),
        (lambda: SumOfGamma(math.inf), ValueError, "k must be a finite positive number"),
        (lambda: Gumbel(scale=0), ValueError, "scale finite and > 0"),
        (lambda: Gumbel(loc=math.nan), ValueError, "loc must be finite"),
        (lambda: Gaussian(scale=-1), ValueError, "scale must be finite and > 0"),
        (lambda: Gaussian(scale=math.inf), ValueError, "scale must be finite and > 0"),
        (lambda: Gumbel().sample((2,), dtype=torch.int64), TypeError, "floating dtype"),
    ],
)
def test_noise_errors(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()
