"""The perturbed Fenchel–Young loss (Berthet et al., 2020): learn θ from target solutions y.

The estimators differentiate a solver inside a model whose loss comes later. When the training
data are solutions themselves (a gold path, a gold selection), the Fenchel–Young loss is the
loss: for a maximising solver over the feasible set C, with noise Z of scale σ,

    F_σ(θ) = E_Z[ max_{z ∈ C} ⟨θ + σZ, z⟩ ],      ȳ_σ(θ) = E_Z[ argmax_{z ∈ C} ⟨θ + σZ, z⟩ ],

    L(θ; y) = F_σ(θ) − ⟨θ, y⟩ ≥ 0,                 ∇_θ L = ȳ_σ(θ) − y.

For a minimising solver F_σ is the expected minimum, L = ⟨θ, y⟩ − F_σ(θ) and ∇_θ L = y − ȳ_σ(θ).
The loss is convex in θ, non-negative for a target y in the convex hull of C (a solution, or an
average of solutions), and vanishes only when the perturbed solver returns y almost surely.
With N samples z_n = MAP(θ + σZ_n), solved in one batched call, the estimate is

    L̂ = (1/N) Σ_n s·⟨θ + σZ_n, z_n − y⟩           (s = +1 for max, −1 for min),

which is ≥ 0 term by term for such y, and whose gradient is exactly (1/N) Σ_n s·(z_n − y) (each
z_n is optimal for its perturbed θ, so it does not move to first order). With Gumbel noise and
an argmax over one-hot solutions L is σ times the softmax cross-entropy of θ/σ.

References:
    Berthet, Blondel, Teboul, Cuturi, Vert, Bach. Learning with Differentiable Perturbed
    Optimizers. NeurIPS 2020, arXiv:2002.08676.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..solvers import SolverInputError, checks_enabled, may_hold_bad_values
from ._base import (
    SolverFunction,
    build_solver,
    call_solver,
    check_count,
    check_minimize,
    check_positive,
    expand_samples,
    resolve_minimize,
    validate_theta,
)
from .layer import DifferentiableSolver
from .noise import Noise, NoiseLike, make_noise

__all__ = ["FenchelYoungLoss"]

Reduction = Literal["mean", "sum", "none"]


class FenchelYoungLoss(nn.Module):
    """Perturbed Fenchel–Young loss of a solver: ``loss(theta [B, *S], target [B, *S])``.

    Args:
        solver: an ``nn.Module`` or callable ``theta [B, *S] -> z [B, *S]``, the name of a
            registered solver (built with ``get_solver(name, **solver_params)``), or a
            :class:`DifferentiableSolver` layer, whose plain solver (and sense) is used.
        noise: the noise Z, ``"gaussian"`` (default), ``"gumbel"`` or any noise of
            :func:`~aimle_zoo.estimators.make_noise`; it is added as θ + σZ for either sense.
        sigma: σ > 0, the noise scale.
        samples: N, perturbed solutions per instance.
        reduction: ``"mean"`` (over the batch, default), ``"sum"`` or ``"none"`` (``[B]``).
        minimize: treat the solver as a minimiser (``True``) or maximiser (``False``); ``None``
            reads its sense (:func:`~aimle_zoo.solvers.solver_sense`).
        generator: optional ``torch.Generator`` for the noise.
        **solver_params: parameters of a named solver, e.g. ``k=5`` for ``"topk"``.

    Example::

        loss_fn = FenchelYoungLoss("dijkstra", sigma=1.0, samples=10)
        loss = loss_fn(model.vertex_costs(maps), gold_paths)  # costs [B, H, W], paths [B, H, W]
    """

    def __init__(
        self,
        solver: nn.Module | SolverFunction | str,
        *,
        noise: NoiseLike = "gaussian",
        sigma: float = 1.0,
        samples: int = 1,
        reduction: Reduction = "mean",
        minimize: bool | None = None,
        generator: torch.Generator | None = None,
        **solver_params: Any,
    ) -> None:
        super().__init__()
        minimize = check_minimize(minimize)
        if isinstance(solver, DifferentiableSolver):  # its plain solver, not its estimator
            minimize = solver.minimize if minimize is None else minimize
            solver = solver.solver
        solver = build_solver(solver, solver_params)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        built = make_noise(noise)
        if built is None:
            raise ValueError(
                "FenchelYoungLoss needs noise (without it the loss is not differentiable in "
                "θ almost everywhere); use noise='gaussian' or noise='gumbel'"
            )
        self.solver = solver
        self.noise: Noise = built
        self.sigma = check_positive("FenchelYoungLoss: sigma", sigma)
        self.samples = check_count("FenchelYoungLoss: samples", samples)
        self.reduction = reduction
        self.minimize = resolve_minimize(solver, minimize)
        self.generator = generator

    def forward(self, theta: Tensor, target: Tensor) -> Tensor:
        """The loss of ``theta [B, *S]`` against target solutions ``target [B, *S]``: a scalar
        (``reduction="mean"`` or ``"sum"``) or ``[B]`` (``"none"``)."""
        theta = validate_theta(theta)
        target = self._check_target(target, theta)
        batch, samples = theta.shape[0], self.samples
        tiled = expand_samples(theta, samples)  # [B·N, *S]
        noise = self.noise.sample(
            tiled.shape, device=tiled.device, dtype=tiled.dtype, generator=self.generator
        )
        perturbed = tiled + self.sigma * noise  # [B·N, *S], θ + σZ
        solutions = call_solver(self.solver, perturbed.detach())  # [B·N, *S]
        gap = solutions - expand_samples(target, samples)  # [B·N, *S], z_n − y
        # ⟨θ + σZ, z − y⟩ over the entries where z and y differ (a ±inf mask entry elsewhere
        # would give inf·0 = NaN)
        terms = torch.where(gap != 0, perturbed * gap, 0.0).reshape(batch, samples, -1)
        losses = terms.sum(dim=2).mean(dim=1)  # [B]
        if self.minimize:
            losses = -losses
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()

    def _check_target(self, target: object, theta: Tensor) -> Tensor:
        if not isinstance(target, Tensor):
            raise SolverInputError(
                f"FenchelYoungLoss: target must be a torch.Tensor of theta's shape "
                f"{tuple(theta.shape)}, got {type(target).__name__}"
            )
        if target.shape != theta.shape:
            raise SolverInputError(
                f"FenchelYoungLoss: target has shape {tuple(target.shape)}, theta "
                f"{tuple(theta.shape)}; the target is one solution per instance, of theta's shape"
            )
        target = target.to(device=theta.device, dtype=theta.dtype)
        if (
            checks_enabled()
            and may_hold_bad_values(target, allow_inf=False)
            and not bool(torch.isfinite(target).all())
        ):
            raise SolverInputError(
                "FenchelYoungLoss: target contains NaN or inf values; targets are solutions "
                "(0/1 indicators or the solver's integer solutions, or their averages)"
            )
        return target

    def extra_repr(self) -> str:
        sense = "min" if self.minimize else "max"
        return (
            f"noise={self.noise!r}, sigma={self.sigma}, samples={self.samples}, "
            f"reduction={self.reduction!r}, sense={sense!r}"
        )
