"""Discrete VAE on MNIST with a k-of-n code per group (the AIMLE paper's experiment).

Encoder 784 → 512 → 256 → m·n logits (ReLU), reshaped to m groups of n; the latent code is
top-k (k = 10 of n = 20) in every group, made differentiable by the latent layer; decoder
m·n → 256 → 512 → 784 Bernoulli logits (ReLU). Inputs are MNIST intensities in [0, 1], not
binarised (like the reference), and are the BCE targets.

Loss per instance: BCE-with-logits summed over the 784 pixels and over the N latent samples,
plus KL = Σ_{groups, j} q_j log(q_j·n) with q = softmax of the group's logits (the KL from the
encoder's categorical to the uniform one, as in the reference, although the code is k-of-n);
the training loss is its batch mean. ``kl_weight`` w scales the KL in the training loss only
(Σ_s BCE_s + w·KL); evaluation always reports the unweighted terms. w = 1 is the ELBO. The
reference code trains, in effect, with w = 1/√S: its adaptive target perturbs with a λ √S times
larger than the one it divides the gradient by, so the BCE gradient reaching the
encoder through the estimator is √S times too large while the KL gradient is not. Recipe
``dvae-mnist-ref`` reproduces that weighting with a correct estimator.

Evaluation runs in eval mode with the MAP codes (the reference evaluated in training mode with
sampled codes). :meth:`DiscreteVAE.evaluate_batch` reports the standard negative ELBO
(BCE + KL) and the reference's test-loss convention mean_s BCE_s + KL/S (identical with MAP
codes, S = 1); ``reference_test_loss=True`` adds the reference's number exactly: S sampled
codes with the training noise and KL/S (comparable with its 60.21 at S = 10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..estimators import AIMLE, AdaptiveTarget, Estimator, SumOfGamma
from ..solvers import checks_enabled
from ._base import (
    ModelInputError,
    ZooModel,
    batch_total,
    check_sizes,
    check_tensor,
    example_generator,
    init_xavier_relu,
    mlp,
    unpack_batch,
)
from ._registry import register_model


def code_kl(logits: Tensor) -> Tensor:
    """KL(q ‖ uniform) = Σ_{g, j} q_gj log(q_gj · n) per instance, q = softmax over n.

    ``logits [B, m, n]`` → ``[B]``.
    """
    log_q = F.log_softmax(logits, dim=-1)  # [B, m, n]
    return (log_q.exp() * (log_q + math.log(logits.shape[-1]))).sum(dim=(1, 2))


@register_model("discrete_vae")
class DiscreteVAE(ZooModel, tags=["vae", "mnist", "k-subset"]):
    """Discrete VAE with m groups of k-of-n codes (see the module docstring).

    Args:
        input_dim: pixels per image (784).
        hidden_dims: encoder hidden sizes (the decoder mirrors them).
        groups: m, the number of code groups.
        group_size: n, the size of each group.
        k: ones per group.
        kl_weight: w >= 0, the weight of the KL term in the training loss (1: the ELBO).
        estimator: estimator name or config dict; ``None`` is the reference recipe (central
            AIMLE, S = 10, SoG(k = 10, s = 10) noise, τ = 1, adaptive β₀ = 0, η = 1e-3, c = 10).
    """

    def __init__(
        self,
        input_dim: int = 784,
        hidden_dims: Sequence[int] = (512, 256),
        groups: int = 20,
        group_size: int = 20,
        k: int = 10,
        kl_weight: float = 1.0,
        estimator: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            type(self).__name__,
            input_dim=input_dim,
            hidden_dims=hidden_dims,
            groups=groups,
            group_size=group_size,
        )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= group_size:
            raise ValueError(
                f"{type(self).__name__}: k must be an integer in [1, {group_size}] "
                f"(at most group_size), got {k!r}"
            )
        if isinstance(kl_weight, bool) or not (
            isinstance(kl_weight, int | float) and 0 <= kl_weight < math.inf
        ):
            raise ValueError(
                f"{type(self).__name__}: kl_weight must be a finite number >= 0 (1 is the "
                f"ELBO), got {kl_weight!r}"
            )
        self.kl_weight = float(kl_weight)
        self.input_dim = input_dim
        self.groups = groups
        self.group_size = group_size
        self.k = k
        code_dim = groups * group_size
        self.encoder = mlp([input_dim, *hidden_dims, code_dim])
        self.decoder = mlp([code_dim, *reversed(hidden_dims), input_dim])
        init_xavier_relu(self)
        self.latent_layer = self._build_latent_layer(
            "topk", estimator, lambda: _default_dvae_estimator(k), k=k
        )

    def _check_images(self, images: Any, where: str) -> Tensor:
        name = f"{type(self).__name__}.{where}"
        checked = check_tensor(
            name,
            "images",
            images,
            shape=f"[B, {self.input_dim}] (or [B, ...] with {self.input_dim} values per image)",
            ndim=(2, 3, 4),
            nonempty=True,
            finite=True,
        )
        if math.prod(checked.shape[1:]) != self.input_dim:
            raise ModelInputError(
                f"{name}: expected {self.input_dim} values per image ([B, {self.input_dim}] or "
                f"e.g. [B, 1, 28, 28]), got shape {tuple(checked.shape)}"
            )
        flat = checked.reshape(checked.shape[0], self.input_dim)
        if checks_enabled() and flat.numel() and bool(((flat < 0) | (flat > 1)).any()):
            raise ModelInputError(
                f"{name}: intensities must lie in [0, 1] (they are the Bernoulli targets), got "
                f"values in [{float(flat.min()):.3g}, {float(flat.max()):.3g}]; divide uint8 "
                "images by 255"
            )
        return flat

    def encode(self, images: Tensor) -> Tensor:
        """Code logits ``[B, m, n]`` of flat images ``[B, input_dim]``."""
        return self.encoder(images).reshape(-1, self.groups, self.group_size)

    def sample_codes(self, logits: Tensor) -> Tensor:
        """k-of-n codes ``[B·N, m·n]`` (sample-minor) from logits ``[B, m, n]``."""
        batch = logits.shape[0]
        codes = self.latent_layer(logits.reshape(batch * self.groups, self.group_size))
        samples = codes.shape[0] // (batch * self.groups)
        codes = codes.reshape(batch, self.groups, samples, self.group_size)  # [B, m, N, n]
        return codes.transpose(1, 2).reshape(batch * samples, self.groups * self.group_size)

    def decode(self, codes: Tensor) -> Tensor:
        """Pixel logits ``[R, input_dim]`` of codes ``[R, m·n]``."""
        return self.decoder(codes)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction logits: ``[B, input_dim]`` in eval mode, ``[B·N, input_dim]`` in
        training mode. ``images`` is ``[B, input_dim]`` (or any ``[B, ...]`` of that size)."""
        if not torch.jit.is_scripting():
            images = self._check_images(images, "forward")
        flat = images.reshape(images.shape[0], -1)
        return self.decode(self.sample_codes(self.encode(flat)))

    def _terms(self, flat: Tensor) -> tuple[Tensor, Tensor, int]:
        """BCE per row ``[B·N]``, KL per instance ``[B]`` and N, with the current mode."""
        logits = self.encode(flat)  # [B, m, n]
        reconstruction = self.decode(self.sample_codes(logits))  # [B·N, input_dim]
        batch = flat.shape[0]
        samples = reconstruction.shape[0] // batch
        per_sample = reconstruction.reshape(batch, samples, self.input_dim)  # [B, N, input_dim]
        targets = flat.unsqueeze(1).expand_as(per_sample)  # a view: the N samples share y
        bce = F.binary_cross_entropy_with_logits(per_sample, targets, reduction="none")
        return bce.sum(dim=2).flatten(), code_kl(logits), samples

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """mean_b [Σ_s BCE_bs + w·KL_b]. ``batch = images [B, 784]`` or ``(images[, labels])``."""
        self._warn_if_eval()
        images = self._batch_images(batch, "training_loss")
        bce, kl, samples = self._terms(images)
        loss = (bce.reshape(-1, samples).sum(dim=1) + self.kl_weight * kl).mean()
        return loss, {"bce": float(bce.detach().mean()), "kl": float(kl.detach().mean())}

    def _batch_images(self, batch: Any, where: str) -> Tensor:
        if not isinstance(batch, Tensor):
            batch = unpack_batch(f"{type(self).__name__}.{where}", batch, ("images", "labels"), 1)[
                0
            ]
        return self._check_images(batch, where)

    def evaluate_batch(self, batch: Any, *, reference_test_loss: bool = False) -> dict[str, Tensor]:
        """Loss sums with the MAP codes, and optionally the reference's sampled test loss.

        Keys: ``bce_sum``, ``kl_sum``, ``neg_elbo_sum`` (= ``loss_sum``, BCE + KL) and
        ``reference_loss_sum`` (mean_s BCE_s + KL/S with S = 1 for MAP codes), ``count``.
        With ``reference_test_loss=True`` also ``sampled_reference_loss_sum``: the reference's
        test loss exactly, with S codes sampled as in training (noise on) and KL/S.
        """
        with self._evaluating():
            images = self._batch_images(batch, "evaluate_batch")
            bce, kl, samples = self._terms(images)
            bce_mean = bce.reshape(-1, samples).mean(dim=1)
            metrics = {
                "bce_sum": batch_total(bce_mean),
                "kl_sum": batch_total(kl),
                "neg_elbo_sum": batch_total(bce_mean + kl),
                "loss_sum": batch_total(bce_mean + kl),
                "reference_loss_sum": batch_total(bce_mean + kl / samples),
                "count": torch.tensor(images.shape[0]),
            }
            if reference_test_loss:
                self.latent_layer.train()
                try:
                    bce, kl, samples = self._terms(images)
                finally:
                    self.latent_layer.eval()
                sampled = bce.reshape(-1, samples).mean(dim=1) + kl / samples
                metrics["sampled_reference_loss_sum"] = batch_total(sampled)
        return metrics

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Uniform random intensities ``[batch_size, input_dim]`` in [0, 1]."""
        images = torch.rand(batch_size, self.input_dim, generator=example_generator())
        return (self._as_input(images),)


def _default_dvae_estimator(k: int) -> Estimator:
    """The AIMLE authors' DVAE recipe: central AIMLE with S = 10 samples,
    SoG(k, s = 10) noise, τ = 1, adaptive target β₀ = 0, η = 1e-3, c = 10."""
    return AIMLE(
        target=AdaptiveTarget(initial_beta=0.0, target_norm=10.0, update_step=1e-3),
        noise=SumOfGamma(k=k, iterations=10),
        samples=10,
        input_temperature=1.0,
        target_temperature=1.0,
        symmetric=True,
    )
