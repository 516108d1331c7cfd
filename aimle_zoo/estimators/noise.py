"""Noise distributions for perturb-and-MAP: Gumbel, Sum-of-Gamma and Gaussian.

A noise object is a small stateless sampler: ``sample(shape, device=..., dtype=...)`` draws
directly on the caller's device (no host-to-device copy), optionally from a
``torch.Generator`` for reproducible runs. ``config()`` returns a JSON-able dict that
:func:`make_noise` turns back into the same object.

Differences from the reference implementation (torch-adaptive-imle ``imle/noise.py``):

* Sum-of-Gamma draws all ``s`` Gamma terms in one vectorised call and reduces them with one
  weighted sum, instead of ``s`` separate draws and tensor additions; this is one kernel launch
  instead of ``s`` on an accelerator.
* Noise is sampled on the device and in the floating dtype of ``theta`` (the original torch-imle
  sampled on the CPU, which fails for CUDA inputs).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

import torch
from torch import Tensor

__all__ = [
    "Gaussian",
    "Gumbel",
    "Noise",
    "NoiseLike",
    "SumOfGamma",
    "list_noises",
    "make_noise",
]


class Noise:
    """Base class of noise distributions ε with density μ(ε) ∝ exp(−ν(ε)).

    Subclasses set ``name`` and implement :meth:`_draw` (in float32 or float64) and
    :meth:`config`. Those with a closed-form ∇ν set ``has_density_gradient = True`` and
    implement :meth:`density_gradient`; the perturbed-optimizer estimator needs it.
    """

    name: ClassVar[str] = ""
    has_density_gradient: ClassVar[bool] = False

    def sample(
        self,
        shape: Sequence[int] | torch.Size,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw i.i.d. noise of ``shape`` on ``device`` in ``dtype``.

        Half-precision dtypes are sampled in float32 and rounded (not every sampler has a
        half-precision kernel).
        """
        if not dtype.is_floating_point:
            raise TypeError(f"{type(self).__name__}: noise needs a floating dtype, got {dtype}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        if generator is not None and generator.device.type != device.type:
            raise ValueError(
                f"{type(self).__name__}: the generator lives on {generator.device} but the noise "
                f"is drawn on {device}; create it with torch.Generator(device={device.type!r})"
            )
        work_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        return self._draw(torch.Size(shape), device, work_dtype, generator).to(dtype)

    def _draw(
        self,
        shape: torch.Size,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise NotImplementedError

    def density_gradient(self, eps: Tensor) -> Tensor:
        """∇ν(ε) = −∇ log μ(ε), elementwise (used by the perturbed optimizer's backward)."""
        raise NotImplementedError(
            f"{type(self).__name__} noise has no closed-form density gradient; "
            "use Gaussian or Gumbel noise"
        )

    def config(self) -> dict[str, Any]:
        """JSON-able description; ``make_noise(noise.config())`` rebuilds the object."""
        return {"name": self.name}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Noise)
            and type(other) is type(self)
            and other.config() == self.config()
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.config().items()))))


class Gumbel(Noise):
    """Gumbel(loc, scale): ε = loc − scale·log(E), E ~ Exponential(1).

    ν(ε) = u + e^{−u} with u = (ε − loc)/scale, so ∇ν(ε) = (1 − e^{−u}) / scale.
    """

    name = "gumbel"
    has_density_gradient = True

    def __init__(self, loc: float = 0.0, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"Gumbel: scale must be > 0, got {scale}")
        self.loc = float(loc)
        self.scale = float(scale)

    def _draw(
        self,
        shape: torch.Size,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> Tensor:
        exponential = torch.empty(shape, device=device, dtype=dtype)
        exponential.exponential_(generator=generator)
        # E = 0 would give +inf; clamp to the smallest normal number instead.
        exponential.clamp_min_(torch.finfo(dtype).tiny)
        return self.loc - self.scale * exponential.log_()

    def density_gradient(self, eps: Tensor) -> Tensor:
        standard = (eps - self.loc) / self.scale
        return -torch.expm1(-standard) / self.scale

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "loc": self.loc, "scale": self.scale}


class SumOfGamma(Noise):
    """Sum-of-Gamma noise SoG(k, s) of I-MLE (Niepert et al., 2021).

    ε = (1/k) · (Σ_{i=1..s} Gamma(shape=1/k, rate=i/k) − log s)
      = Σ_{i=1..s} G_i / i − (log s)/k,   G_i ~ Gamma(1/k, 1).

    The sum of ``k`` independent draws is approximately Gumbel(0, 1) (exactly as s → ∞), which
    makes perturb-and-MAP over k-subsets close to sampling exp⟨θ, z⟩. The mean of one entry is
    (H_s − ln s)/k, with H_s the s-th harmonic number.

    Args:
        k: the number of ones per solution (e.g. the ``k`` of top-k); a float is allowed.
        iterations: the number of Gamma terms ``s``.
    """

    name = "sog"

    def __init__(self, k: float, iterations: int = 10) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
            raise ValueError(f"SumOfGamma: k must be a positive number, got {k!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"SumOfGamma: iterations must be an integer >= 1, got {iterations!r}")
        self.k = float(k)
        self.iterations = iterations

    def _draw(
        self,
        shape: torch.Size,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> Tensor:
        terms = self.iterations
        concentration = torch.full((), 1.0 / self.k, device=device, dtype=dtype)
        gammas = torch._standard_gamma(  # [s, *shape], G_i ~ Gamma(1/k, 1)
            concentration.expand(terms, *shape), generator=generator
        )
        weights = 1.0 / torch.arange(1, terms + 1, device=device, dtype=dtype)  # [s]
        total = torch.tensordot(weights, gammas, dims=1)  # [*shape], Σ_i G_i / i
        return total.sub_(math.log(terms) / self.k)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "iterations": self.iterations}


class Gaussian(Noise):
    """Gaussian N(0, scale²); ν(ε) = ε²/(2·scale²), so ∇ν(ε) = ε / scale²."""

    name = "gaussian"
    has_density_gradient = True

    def __init__(self, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"Gaussian: scale must be > 0, got {scale}")
        self.scale = float(scale)

    def _draw(
        self,
        shape: torch.Size,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> Tensor:
        noise = torch.randn(shape, device=device, dtype=dtype, generator=generator)
        return noise.mul_(self.scale)

    def density_gradient(self, eps: Tensor) -> Tensor:
        return eps / self.scale**2

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}


_NOISES: dict[str, type[Noise]] = {"gumbel": Gumbel, "sog": SumOfGamma, "gaussian": Gaussian}
_NO_NOISE = "none"

#: What an estimator accepts as ``noise``: a :class:`Noise`, a name, a config dict or ``None``.
NoiseLike: TypeAlias = Noise | str | Mapping[str, Any] | None


def list_noises() -> list[str]:
    """Names accepted by :func:`make_noise` (besides ``None``)."""
    return [*_NOISES, _NO_NOISE]


def make_noise(noise: NoiseLike, **params: Any) -> Noise | None:
    """Build a noise distribution from a name, a config dict, an instance or ``None``.

    ``make_noise("sog", k=5)``, ``make_noise({"name": "sog", "k": 5})`` and
    ``make_noise(SumOfGamma(5))`` give the same object; ``"none"`` and ``None`` give ``None``
    (no noise, i.e. plain MAP).

    Raises:
        ValueError: unknown name (the message lists the known ones), or bad parameters.
    """
    if noise is None:
        if params:
            raise ValueError(f"noise=None takes no parameters, got {sorted(params)}")
        return None
    if isinstance(noise, Noise):
        if params:
            raise ValueError(
                f"parameters {sorted(params)} cannot be applied to the noise object {noise!r}; "
                "pass a name instead, e.g. make_noise('sog', k=5)"
            )
        return noise
    if isinstance(noise, Mapping):
        merged = {**noise, **params}
        if "name" not in merged:
            raise ValueError(f"a noise config needs a 'name' key, got {dict(noise)!r}")
        noise = merged.pop("name")
        params = merged
    if not isinstance(noise, str):
        raise TypeError(
            "noise must be a Noise object, a name, a config dict or None, "
            f"got {type(noise).__name__}"
        )
    key = noise.lower()
    if key == _NO_NOISE:
        return make_noise(None, **params)
    if key not in _NOISES:
        close = difflib.get_close_matches(key, list_noises(), n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown noise {noise!r}.{hint} Known noises: {', '.join(list_noises())}."
        )
    cls = _NOISES[key]
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as err:
        if cls is SumOfGamma and "k" not in params:
            raise ValueError(
                "Sum-of-Gamma noise needs k, the number of ones per solution: pass "
                "noise={'name': 'sog', 'k': 5} or noise=SumOfGamma(k=5)"
            ) from err
        raise TypeError(
            f"noise {key!r} does not accept parameters {sorted(params)}: {err}. "
            f"Its signature is {cls.__name__}{inspect.signature(cls)}"
        ) from err
    return cls(**params)
