"""Discrete VAE: KL formula, code layout, loss conventions, evaluation conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aimle_zoo.models import ModelInputError
from aimle_zoo.models.dvae import code_kl

from ._helpers import make_batch, tiny_model


def _numpy_topk_codes(logits: np.ndarray, k: int) -> np.ndarray:
    """k-of-n indicator per group of ``[B, m, n]`` logits, flattened to ``[B, m·n]``."""
    codes = np.zeros_like(logits)
    top = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
    np.put_along_axis(codes, top, 1.0, axis=-1)
    return codes.reshape(len(logits), -1)


def _numpy_bce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Σ_pixels BCE-with-logits = Σ softplus(l) − x·l, per row."""
    return (np.logaddexp(0, logits) - targets * logits).sum(axis=1)


def _numpy_kl(logits: np.ndarray) -> np.ndarray:
    q = np.exp(logits - logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    return (q * np.log(q * logits.shape[-1])).sum(axis=(1, 2))


def test_code_kl_matches_the_direct_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 3, 5, generator=generator, dtype=torch.float64) * 3
    np.testing.assert_allclose(code_kl(logits).numpy(), _numpy_kl(logits.numpy()), rtol=1e-12)


def test_code_kl_hand_checked_values() -> None:
    assert code_kl(torch.zeros(2, 4, 6)).abs().max() < 1e-6  # uniform q: KL = 0
    peaked = torch.full((1, 2, 5), -1e4)
    peaked[..., 0] = 0  # q = one-hot: KL = log n per group
    assert code_kl(peaked).item() == pytest.approx(2 * math.log(5))


def test_codes_are_k_of_n_per_group_in_the_sample_minor_layout() -> None:
    model = tiny_model("discrete_vae", estimator={"name": "aimle", "samples": 4})
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 3, 5, generator=generator) * 1e3  # noise cannot change the top-k
    expected = torch.from_numpy(_numpy_topk_codes(logits.numpy(), 2)).float()  # [B, m·n]
    model.eval()
    assert torch.equal(model.sample_codes(logits), expected)
    model.train()
    sampled = model.sample_codes(logits)  # [B·N, m·n], row b·N + s is sample s of b
    assert torch.equal(sampled, expected.repeat_interleave(4, dim=0))


def test_training_loss_sums_bce_over_samples_and_adds_kl_once() -> None:
    samples = 2
    model = tiny_model("discrete_vae", estimator={"name": "ste", "noise": None, "samples": samples})
    (images,) = make_batch("discrete_vae", model, 6)
    model.train()
    loss, logs = model.training_loss(images)
    with torch.no_grad():
        logits = model.encode(images).numpy()
        codes = torch.from_numpy(_numpy_topk_codes(logits, 2)).float()
        reconstruction = model.decode(codes).numpy()
    bce = _numpy_bce(reconstruction, images.numpy())
    expected = (samples * bce + _numpy_kl(logits)).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["bce"] == pytest.approx(bce.mean(), rel=1e-5)


@pytest.mark.parametrize("kl_weight", [0.0, 1 / math.sqrt(10), 2.5])
def test_kl_weight_scales_the_training_kl_but_not_the_evaluation(kl_weight: float) -> None:
    plain = tiny_model("discrete_vae", estimator={"name": "ste", "noise": None})
    weighted = tiny_model(
        "discrete_vae", estimator={"name": "ste", "noise": None}, kl_weight=kl_weight
    )
    weighted.load_state_dict(plain.state_dict())
    (images,) = make_batch("discrete_vae", plain, 6)
    with torch.no_grad():
        logits = plain.encode(images).numpy()
        reconstruction = plain.decode(torch.from_numpy(_numpy_topk_codes(logits, 2)).float())
    bce = _numpy_bce(reconstruction.numpy(), images.numpy())
    loss, _ = weighted.train().training_loss(images)
    assert loss.item() == pytest.approx((bce + kl_weight * _numpy_kl(logits)).mean(), rel=1e-5)
    expected = plain.evaluate_batch(images)
    for key, value in weighted.evaluate_batch(images).items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "1", True])
def test_kl_weight_must_be_a_finite_non_negative_number(bad: object) -> None:
    with pytest.raises(ValueError, match="kl_weight must be a finite number >= 0"):
        tiny_model("discrete_vae", kl_weight=bad)


def test_evaluation_reports_both_conventions() -> None:
    samples = 4
    model = tiny_model("discrete_vae", estimator={"name": "ste", "noise": None, "samples": samples})
    (images,) = make_batch("discrete_vae", model, 5)
    model.train()
    metrics = model.evaluate_batch((images,), reference_test_loss=True)
    assert model.training and model.latent_layer.training  # modes restored
    with torch.no_grad():
        logits = model.encode(images).numpy()
        codes = torch.from_numpy(_numpy_topk_codes(logits, 2)).float()
        bce = _numpy_bce(model.decode(codes).numpy(), images.numpy())
    kl = _numpy_kl(logits)
    assert metrics["neg_elbo_sum"].item() == pytest.approx((bce + kl).sum(), rel=1e-5)
    assert metrics["reference_loss_sum"].item() == pytest.approx((bce + kl).sum(), rel=1e-5)
    # noise off: the sampled codes are the MAP codes, so only the KL/S convention differs
    sampled = metrics["sampled_reference_loss_sum"].item()
    assert sampled == pytest.approx((bce + kl / samples).sum(), rel=1e-5)
    assert "sampled_reference_loss_sum" not in model.evaluate_batch((images,))


def test_sampled_reference_loss_uses_noisy_codes() -> None:
    model = tiny_model("discrete_vae")  # the reference recipe: S = 10, SoG noise
    (images,) = make_batch("discrete_vae", model, 5)
    model.eval()
    metrics = model.evaluate_batch(images, reference_test_loss=True)
    assert not model.training and not model.latent_layer.training
    assert torch.isfinite(metrics["sampled_reference_loss_sum"])
    assert metrics["sampled_reference_loss_sum"] != metrics["reference_loss_sum"]


def test_images_of_any_layout_with_the_right_size_and_range() -> None:
    model = tiny_model("discrete_vae").eval()
    (images,) = make_batch("discrete_vae", model, 3)
    assert torch.equal(model(images.reshape(3, 1, 4, 4)), model(images))
    with pytest.raises(ModelInputError, match=r"intensities must lie in \[0, 1\]"):
        model(images * 255)
    with pytest.raises(ModelInputError, match="expected 16 values per image"):
        model(torch.rand(3, 15))
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
        tiny_model("discrete_vae", k=6)


def test_a_half_precision_model_sums_its_metrics_without_overflow() -> None:
    """1,500 images × ~100 nats exceed float16's 65504: the batch sums are taken in float32."""
    import aimle_zoo

    model = aimle_zoo.from_pretrained("dvae-mnist").eval()
    images = torch.rand(1500, 784, generator=torch.Generator().manual_seed(0))
    full = model.reduce_metrics([model.evaluate_batch(images)])
    half = model.half().reduce_metrics([model.evaluate_batch(images.half())])
    for key in ("bce", "kl", "neg_elbo"):
        assert math.isfinite(half[key]), key
        assert half[key] == pytest.approx(full[key], rel=0.02), key


def test_intensities_of_exactly_zero_and_one_are_valid_targets() -> None:
    """Binarised images and the extremes of scaled uint8 images lie on the range's edges."""
    model = tiny_model("discrete_vae").eval()
    binary = (torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    binary[0], binary[1] = 0.0, 1.0
    assert model(binary).shape == (3, 16)
    assert torch.isfinite(model.evaluate_batch(binary)["neg_elbo_sum"])
    for outside in (binary - 1e-3, binary + 1e-3):
        with pytest.raises(ModelInputError, match=r"intensities must lie in \[0, 1\]"):
            model(outside)


@pytest.mark.parametrize("k", [1, 5])
def test_k_may_be_any_integer_from_one_to_the_group_size(k: int) -> None:
    model = tiny_model("discrete_vae", k=k).eval()  # groups of n = 5
    (images,) = make_batch("discrete_vae", model, 2)
    with torch.no_grad():
        codes = model.sample_codes(model.encode(images)).reshape(2, 3, 5)
    assert torch.equal(codes.sum(dim=2), torch.full((2, 3), float(k)))


@pytest.mark.parametrize("bad", [0, 6, True, 2.0])
def test_k_outside_one_to_the_group_size_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\]"):
        tiny_model("discrete_vae", k=bad)


def test_every_evaluation_sum_and_the_logged_terms() -> None:
    model = tiny_model("discrete_vae", estimator={"name": "ste", "noise": None, "samples": 3})
    (images,) = make_batch("discrete_vae", model, 5)
    metrics = model.evaluate_batch(images)
    with torch.no_grad():
        logits = model.encode(images).numpy()
        codes = torch.from_numpy(_numpy_topk_codes(logits, 2)).float()
        bce = _numpy_bce(model.decode(codes).numpy(), images.numpy())
    kl = _numpy_kl(logits)
    assert metrics["bce_sum"].item() == pytest.approx(bce.sum(), rel=1e-5)
    assert metrics["kl_sum"].item() == pytest.approx(kl.sum(), rel=1e-5)
    assert metrics["loss_sum"].item() == pytest.approx((bce + kl).sum(), rel=1e-5)
    assert metrics["count"].item() == 5
    _, logs = model.train().training_loss(images)  # noise off: the MAP codes, 3 times
    assert logs["bce"] == pytest.approx(bce.mean(), rel=1e-5)
    assert logs["kl"] == pytest.approx(kl.mean(), rel=1e-5)
