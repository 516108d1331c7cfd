"""Target distributions of I-MLE / AIMLE: how far to move θ along −dy, and how to scale g.

Given the incoming gradient ``dy = ∂L/∂z``, the estimators solve the MAP problem again at the
target θ' = θ − λ·dy (θ + λ·dy for a minimising solver) and take finite differences. A target
decides the step λ (:meth:`Target.step_size`) and post-processes the raw difference g
(:meth:`Target.process`).

* :class:`FixedTarget`: a constant λ (I-MLE), optionally dividing g by λ.
* :class:`AdaptiveTarget`: λ = β·‖θ‖/‖dy‖ with β adapted so that the gradient keeps about
  ``target_norm`` non-zero entries per sample (AIMLE, Minervini et al., 2023).

Differences from the reference implementation (torch-adaptive-imle ``imle/target.py``):

* **One λ for perturbation and scaling.** The reference perturbs with λ computed on the
  sample-tiled θ ``[B·N, *S]`` but divides the gradient by λ computed on the untiled θ
  ``[B, *S]``, so with N samples the gradient is inflated by √N. Here λ is computed once, on the
  tiled θ (so the perturbation size matches the reference), and used for both.
* **State in buffers.** β, the running non-zero count c̄ and the previous update Δ are
  registered buffers: they are saved in ``state_dict`` and restored on load, so a resumed run
  continues the adaptation exactly (the reference keeps them in plain attributes).
* **No host syncs in the update.** It is written with tensor operations; the reference calls
  ``.item()`` on every step.
* **No α.** The reference's θ' = α·θ − λ·dy has α = 1 in every experiment; it is dropped.
* **λ = 0.** A zero λ (β = 0 or dy = 0) leaves g unscaled (it is zero then anyway); a
  :class:`FixedTarget` requires λ > 0, so the reference's division by 1e-7 cannot happen.
* **Data parallel.** With ``torch.distributed`` initialised and more than one rank, the
  non-zero count is summed over ranks before the running average, so every rank moves β
  identically.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._names import UnknownNameError, did_you_mean

__all__ = ["AdaptiveTarget", "FixedTarget", "Target", "TargetLike", "make_target", "times_step"]


def step_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of λ and of the norms behind it: float32 for half precision, where ‖θ‖, ‖dy‖
    and λ overflow or underflow (a loss-scaled dy easily has ‖dy‖ > 65504), else ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def times_step(step: Tensor, values: Tensor) -> Tensor:
    """λ·values in λ's dtype: float32 for half-precision values, whose range λ·dy overflows
    (a target θ ∓ λ·dy is then built, and solved, in float32)."""
    return step * values.to(step.dtype)


def _divide_by_step(values: Tensor, step: Tensor) -> Tensor:
    """values/λ, computed in λ's dtype and returned in the dtype of ``values``."""
    return (values.to(step.dtype) / step).to(values.dtype)


class Target(nn.Module):
    """Base class of targets: ``step_size`` gives λ, ``process`` post-processes g."""

    name: ClassVar[str] = ""

    def step_size(self, theta: Tensor, dy: Tensor) -> Tensor:
        """λ ≥ 0 as a 0-dim tensor on θ's device, in :func:`step_dtype` of θ's dtype.

        Args:
            theta: the sample-tiled parameters ``[B·N, *S]``.
            dy: the incoming gradient ``[B·N, *S]``.
        """
        raise NotImplementedError

    def process(self, gradient: Tensor, step: Tensor) -> Tensor:
        """Post-process the finite difference ``gradient [B, S, *shape]`` taken with λ = step."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments plus ``"name"``; :func:`make_target` rebuilds it."""
        raise NotImplementedError

    def diagnostics(self) -> dict[str, float]:
        """Current adaptive state as floats (synchronises with the device)."""
        return {}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")


class FixedTarget(Target):
    """I-MLE target: θ' = θ ∓ λ·dy with a constant λ; g/λ when ``scale_gradient``.

    Args:
        lambda_: the step λ > 0.
        scale_gradient: divide the finite difference by λ, so that the gradient's scale does not
            depend on λ (the reference's ``TargetDistribution`` does not scale by default).
    """

    name = "fixed"

    def __init__(self, lambda_: float = 10.0, scale_gradient: bool = True) -> None:
        super().__init__()
        if (
            isinstance(lambda_, bool)
            or not isinstance(lambda_, (int, float))
            or not (0 < lambda_ < math.inf)
        ):
            raise ValueError(
                f"FixedTarget: lambda_ must be a finite number > 0, got {lambda_!r}; "
                "use AdaptiveTarget to let λ adapt from 0"
            )
        self.lambda_ = float(lambda_)
        if not isinstance(scale_gradient, bool):
            raise TypeError(
                f"FixedTarget: scale_gradient must be True or False, got {scale_gradient!r}"
            )
        self.scale_gradient = scale_gradient

    def step_size(self, theta: Tensor, dy: Tensor) -> Tensor:
        return torch.full((), self.lambda_, device=theta.device, dtype=step_dtype(theta.dtype))

    def process(self, gradient: Tensor, step: Tensor) -> Tensor:
        return _divide_by_step(gradient, step) if self.scale_gradient else gradient

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lambda_": self.lambda_, "scale_gradient": self.scale_gradient}


#: Backward passes in which :class:`AdaptiveTarget` looks for an all-zero θ (one host sync
#: each), the deadlock of a zero-initialised output layer.
ZERO_THETA_CHECKS = 20


class AdaptiveTarget(Target):
    """AIMLE target: λ = β·‖θ‖/‖dy‖, with β driven towards a non-zero count per sample.

    Norms are Frobenius norms over the whole (tiled) batch; λ = 0 when ‖dy‖ = 0. On every
    backward, with g ``[B, S, *shape]`` the finite difference (after the central ÷2, before
    scaling):

        ĉ  = count_nonzero(g) / (B·S)
        c̄ ← ρ·c̄ + (1 − ρ)·ĉ
        Δ  = (+η if c̄ < c else −η) + μ·Δ_prev
        β ← max(β + Δ, 0)

    and the gradient returned is g/λ (g when λ = 0). The β used for λ is the value before the
    update. β, c̄ and Δ_prev are buffers (``beta``, ``grad_norm``, ``last_update``) kept in
    float32 at least: ``model.half()`` or ``.bfloat16()`` moves them but keeps their
    precision (in bfloat16, β + η with η = 1e-3 rounds back to β; in float16 it moves by 2η).

    Args:
        initial_beta: β₀ ≥ 0 (default 1, the reference class default, so the first backward
            already gives a gradient; the reference experiments start from 0).
        target_norm: c, the wanted average number of non-zero gradient entries per sample.
        update_step: η ≥ 0 (default 1e-3, the value of the reference's VAE and NRI
            experiments; its class default, 1e-4, is the one of its L2X experiment).
        momentum: μ ≥ 0.
        decay: ρ in [0, 1].
        initial_grad_norm: c̄₀ ≥ 0.
        sync_distributed: sum the counts over ranks when ``torch.distributed`` is initialised
            with more than one process.
    """

    name = "adaptive"
    beta: Tensor
    grad_norm: Tensor
    last_update: Tensor

    def __init__(
        self,
        initial_beta: float = 1.0,
        target_norm: float = 1.0,
        update_step: float = 1e-3,
        momentum: float = 0.0,
        decay: float = 0.9,
        initial_grad_norm: float = 1.0,
        sync_distributed: bool = True,
    ) -> None:
        super().__init__()
        for label, value in (
            ("initial_beta", initial_beta),
            ("target_norm", target_norm),
            ("update_step", update_step),
            ("momentum", momentum),
            ("initial_grad_norm", initial_grad_norm),
        ):
            _check_non_negative(label, value)
        _check_non_negative("decay", decay)
        if decay > 1:
            raise ValueError(f"AdaptiveTarget: decay must be in [0, 1], got {decay}")
        self.initial_beta = float(initial_beta)
        self.target_norm = float(target_norm)
        self.update_step = float(update_step)
        self.momentum = float(momentum)
        self.decay = float(decay)
        self.initial_grad_norm = float(initial_grad_norm)
        self.sync_distributed = bool(sync_distributed)
        self.register_buffer("beta", torch.tensor(self.initial_beta))
        self.register_buffer("grad_norm", torch.tensor(self.initial_grad_norm))
        self.register_buffer("last_update", torch.tensor(0.0))
        self._zero_theta_checks = ZERO_THETA_CHECKS

    def _apply(self, fn: Any, recurse: bool = True) -> AdaptiveTarget:
        """``Module._apply`` (``.to``, ``.cuda``, ``.half``, ...) that never lowers the state's
        precision below float32: a half-precision cast only moves the buffers."""
        before = {name: self._buffers[name] for name in _ADAPTIVE_STATE}
        super()._apply(fn, recurse)
        for name, old in before.items():
            moved = self._buffers[name]
            if old is None or moved is None:
                continue
            if torch.promote_types(moved.dtype, torch.float32) != moved.dtype:  # below float32
                kept = torch.promote_types(old.dtype, torch.float32)
                self._buffers[name] = old.to(device=moved.device, dtype=kept)
        return self

    def step_size(self, theta: Tensor, dy: Tensor) -> Tensor:
        """λ = β·‖θ‖/‖dy‖ over the whole batch (0 when dy = 0).

        ‖θ‖ counts the finite entries only: ±inf entries of θ (a mask ruling entries out, or
        an adjacency's missing edges) would make λ infinite; they stay infinite in the target.
        """
        # a target outside any module (the @aimle decorator) follows θ's device once,
        # instead of copying β there and the counts back on every backward
        if self.beta.device != theta.device and theta.device.type != "meta":
            self.to(theta.device)
        dtype = step_dtype(theta.dtype)
        finite = theta.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        theta_norm = torch.linalg.vector_norm(finite, dtype=dtype)
        dy_norm = torch.linalg.vector_norm(dy, dtype=dtype)
        if self._zero_theta_checks > 0:
            self._zero_theta_checks -= 1
            if bool(torch.logical_and(theta_norm == 0, dy_norm > 0)):
                self._zero_theta_checks = 0
                warnings.warn(
                    "AIMLE: θ is all zeros, so λ = β·‖θ‖/‖dy‖ = 0 whatever β becomes and the "
                    "gradient is zero: θ cannot move. Initialise the layer producing θ with "
                    "non-zero weights (is its output layer zero-initialised?), or use a "
                    "FixedTarget",
                    RuntimeWarning,
                    stacklevel=2,
                )
        beta = self.beta.to(device=theta.device, dtype=dtype)
        safe_norm = dy_norm.clamp_min(torch.finfo(dtype).tiny)
        return torch.where(dy_norm > 0, beta * theta_norm / safe_norm, torch.zeros_like(beta))

    @torch.no_grad()
    def process(self, gradient: Tensor, step: Tensor) -> Tensor:
        """Update β from the non-zero count of ``gradient [B, S, *shape]``; return g/λ."""
        instances = gradient.shape[0] * gradient.shape[1]
        state = self.grad_norm
        nonzero = torch.count_nonzero(gradient).to(device=state.device, dtype=state.dtype)
        total = torch.full((), float(instances), device=state.device, dtype=state.dtype)
        vetoes = torch.zeros_like(total)
        if self.sync_distributed and _distributed_world_size() > 1:
            counts = torch.stack([nonzero, total, vetoes]).to(gradient.device)
            dist.all_reduce(counts)
            nonzero, total, vetoes = counts.to(state.device).unbind()
        # an empty batch (on every rank), or a rank that skipped its step, leaves the state
        seen = torch.logical_and(total > 0, vetoes == 0)
        observed = nonzero / total.clamp_min(1.0)  # ĉ
        averaged = self.grad_norm * self.decay + (1.0 - self.decay) * observed  # c̄
        self.grad_norm.copy_(torch.where(seen, averaged, self.grad_norm))
        step_up, step_down = self.update_step, -self.update_step
        update = torch.where(self.grad_norm < self.target_norm, step_up, step_down)  # ±η
        if self.momentum != 0 or self.update_step == 0:  # μ·Δ_prev (an exact no-op otherwise)
            update = update + self.momentum * self.last_update  # Δ
        update = torch.where(seen, update, 0.0)
        self.beta.add_(update).clamp_min_(0.0)
        self.last_update.copy_(torch.where(seen, update, self.last_update))
        return _divide_by_step(gradient, torch.where(step > 0, step, 1.0))

    def skip_step(self, device: torch.device) -> None:
        """This rank skips a backward (a non-finite float16 ∂L/∂z): under ``torch.distributed``
        it still joins the count all-reduce of :meth:`process`, with a veto, so the collectives
        stay paired and no rank moves β this step. Nothing to do in a single process."""
        if self.sync_distributed and _distributed_world_size() > 1:  # as process() sends it
            dist.all_reduce(
                torch.tensor([0.0, 0.0, 1.0], device=device, dtype=self.grad_norm.dtype)
            )

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "initial_beta": self.initial_beta,
            "target_norm": self.target_norm,
            "update_step": self.update_step,
            "momentum": self.momentum,
            "decay": self.decay,
            "initial_grad_norm": self.initial_grad_norm,
            "sync_distributed": self.sync_distributed,
        }

    def diagnostics(self) -> dict[str, float]:
        return {"beta": float(self.beta), "grad_norm_avg": float(self.grad_norm)}


_ADAPTIVE_STATE = ("beta", "grad_norm", "last_update")


class UnknownTargetError(UnknownNameError, ValueError):
    """No target has the requested name."""


_TARGETS: dict[str, type[Target]] = {"fixed": FixedTarget, "adaptive": AdaptiveTarget}

#: What AIMLE accepts as ``target``: a :class:`Target`, a name, a config dict or ``None``.
TargetLike = Target | str | Mapping[str, Any] | None


def make_target(target: TargetLike, **params: Any) -> Target:
    """Build a target from an instance, a name (``"fixed"``, ``"adaptive"``) or a config dict.

    ``None`` gives ``AdaptiveTarget(**params)``.
    """
    if target is None:
        return AdaptiveTarget(**params)
    if isinstance(target, Target):
        if params:
            raise ValueError(
                f"parameters {sorted(params)} cannot be applied to the target object {target!r}"
            )
        return target
    if isinstance(target, Mapping):
        merged = {**target, **params}
        if "name" not in merged:
            raise ValueError(f"a target config needs a 'name' key, got {dict(target)!r}")
        target = merged.pop("name")
        params = merged
    if not isinstance(target, str):
        raise TypeError(
            f"target must be a Target, a name, a config dict or None, got {type(target).__name__}"
        )
    key = target.lower()
    if key not in _TARGETS:
        raise UnknownTargetError(
            f"unknown target {target!r}.{did_you_mean(key, _TARGETS)} Known targets: "
            f"{', '.join(_TARGETS)}."
        )
    cls = _TARGETS[key]
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as err:
        raise TypeError(
            f"target {target!r} does not accept parameters {sorted(params)}: {err}. "
            f"Its signature is {cls.__name__}{inspect.signature(cls)}"
        ) from err
    return cls(**params)


def _check_non_negative(label: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"AdaptiveTarget: {label} must be a finite number >= 0, got {value!r}")


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
