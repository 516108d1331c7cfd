"""Solution caching: answer a share of training calls from a pool of solutions seen before.

An expensive solver (a MILP, a per-instance CPU loop) dominates training time, and most of its
calls are made on parameters close to earlier ones. :class:`CachedSolver` (the solution cache of
Mulamba et al., 2021, "Contrastive losses and solution caching for predict-and-optimize"; PyEPO's
``solve_ratio``) keeps a pool Z_pool of distinct solutions and, in training mode, calls the
solver with probability ``solve_ratio`` only. Otherwise it answers with the best pooled solution
under the linear objective of the MAP estimators,

    ẑ(θ) = argmax_{z ∈ Z_pool} s·⟨θ, z⟩,   s = +1 for a maximising solver, −1 for a minimising one,

which is exact whenever the pool holds the optimum. Every solver answer joins the pool; seed it
with known solutions (the training targets) through :meth:`CachedSolver.add`.

The pool is only valid when every instance has the same feasible set (one k, one grid, one
graph): a pooled solution is assumed feasible for any θ of the pool's instance shape. An entry
of θ that is ±inf (an adjacency's missing edge) scores ±inf in every solution using it, so a
minimiser never picks a pooled path through a missing edge; an instance whose best pooled score
is not finite is solved by the solver instead. In eval mode the cache always calls the solver
and leaves the pool as it is, so evaluation and export see the exact solver.
"""

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ._base import (
    Sense,
    SolutionValues,
    SolverInputError,
    solver_method,
    solver_sense,
    solver_values,
)
from ._registry import get_solver

__all__ = ["CachedSolver"]

_SCORES_PER_CHUNK = 1 << 22  # scores held at once by a look-up (16 MB in float32)
_LARGEST_POOLED_INTEGER = 1 << 24  # integers above lose precision in the float32 pool


class CachedSolver(nn.Module):
    """A solver answering a share ``1 − solve_ratio`` of its training calls from a solution pool.

    Args:
        solver: a registered solver name (built with ``get_solver(name, **solver_params)``) or
            a callable ``theta [B, *S] -> z [B, *S]`` (an ``nn.Module`` moves with this one).
        solve_ratio: probability in [0, 1] that a training call runs the solver; the other
            calls are answered from the pool (1: always solve, the pool only collects).
        sense: ``"max"`` or ``"min"``; ``None`` reads the solver's
            (:func:`~aimle_zoo.solvers.solver_sense`). Estimators read this instance's sense.
        max_size: the most distinct solutions kept (the oldest leave first); ``None``: no bound.
        generator: the random generator of the solve-or-look-up draws (CPU); ``None`` uses
            PyTorch's global one, so ``torch.manual_seed`` makes a run reproducible.
        **solver_params: parameters of a named solver.

    Attributes:
        solver_calls: solver calls made in training mode.
        pool_answers: training calls answered from the pool alone.

    Example::

        cached = CachedSolver("dijkstra_scipy", solve_ratio=0.1)
        cached.add(gold_paths)                                   # [N, 12, 12] known optima
        layer = DifferentiableSolver(cached, "aimle")            # 90% of calls skip Dijkstra
    """

    __jit_ignored_attributes__: ClassVar[list[str]] = ["generator", "_keys"]
    __jit_unused_properties__: ClassVar[list[str]] = ["relax", "marginals", "sample", "pool_size"]

    pool: Tensor

    def __init__(
        self,
        solver: nn.Module | Any,
        solve_ratio: float = 0.1,
        *,
        sense: Sense | None = None,
        max_size: int | None = None,
        generator: torch.Generator | None = None,
        **solver_params: Any,
    ) -> None:
        super().__init__()
        if isinstance(solver, str):
            solver = get_solver(solver, **solver_params)
        elif solver_params:
            raise TypeError(
                f"CachedSolver: solver parameters {sorted(solver_params)} are only used with a "
                "solver name; set them on the solver object instead"
            )
        if not callable(solver):
            raise TypeError(
                "CachedSolver: solver must be a registered name or a callable theta -> z, got "
                f"{type(solver).__name__}"
            )
        if isinstance(solve_ratio, bool) or not isinstance(solve_ratio, int | float):
            raise TypeError(f"CachedSolver: solve_ratio must be a number, got {solve_ratio!r}")
        if not 0.0 <= float(solve_ratio) <= 1.0:
            raise ValueError(
                f"CachedSolver: solve_ratio is the probability of calling the solver, a number "
                f"in [0, 1]; got {solve_ratio!r}"
            )
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
        ):
            raise ValueError(
                f"CachedSolver: max_size must be a positive int or None, got {max_size!r}"
            )
        if sense is not None and sense not in ("max", "min"):
            raise ValueError(f"CachedSolver: sense must be 'max', 'min' or None, got {sense!r}")
        method = getattr(solver, "batch_multiple", None)
        if callable(method) and int(method()) > 1:
            raise ValueError(
                "CachedSolver: the solver holds per-instance data (its batches come in "
                f"multiples of {int(method())}: per-instance sources, targets or masks), so "
                "instances differ in their feasible solutions and one pool cannot serve them; "
                "cache a solver built for one instance layout (a single source, target or mask)"
            )
        self.solver = solver
        self.solve_ratio = float(solve_ratio)
        self.sense: Sense = sense if sense is not None else solver_sense(solver)
        self.values: SolutionValues = solver_values(solver)
        self.max_size = max_size
        self.generator = generator
        self.instance_shape: tuple[int, ...] | None = None
        self.register_buffer("pool", torch.zeros(0, 0), persistent=False)  # [P, D]
        self._keys: dict[bytes, None] = {}  # insertion-ordered keys of the pool's rows
        self.solver_calls = 0
        self.pool_answers = 0

    @property
    def pool_size(self) -> int:
        """The number of distinct solutions in the pool."""
        return len(self._keys)

    def extra_repr(self) -> str:
        return f"solve_ratio={self.solve_ratio}, sense={self.sense!r}, pool={self.pool_size}" + (
            f", max_size={self.max_size}" if self.max_size is not None else ""
        )

    @property
    def relax(self) -> Callable[..., Tensor] | None:
        """The wrapped solver's continuous relaxation ``relax(theta, temperature)``, if it has
        one (the ``relaxed`` estimator uses it, and the cache for its hard samples)."""
        return solver_method(self.solver, "relax")

    @property
    def marginals(self) -> Callable[..., Tensor] | None:
        """The wrapped solver's exact marginals ``marginals(theta, temperature)``, if it has
        them (the ``simple`` estimator uses them)."""
        return solver_method(self.solver, "marginals")

    @property
    def sample(self) -> Callable[..., Tensor] | None:
        """The wrapped solver's exact sampler ``sample(theta, temperature, generator)``, if it
        has one (the ``simple`` estimator's forward; the cache does not answer for it)."""
        return solver_method(self.solver, "sample")

    def forward(self, theta: Tensor) -> Tensor:
        """``z [B, *S]``: the solver's answer, or in training mode with probability
        ``1 − solve_ratio`` the best pooled solutions."""
        if self.training and not torch.jit.is_scripting():
            return self._training_call(theta)
        return self.solver(theta)

    @torch.jit.unused
    def _training_call(self, theta: Tensor) -> Tensor:
        draw = torch.rand((), generator=self.generator)
        if self.pool_size == 0 or float(draw) < self.solve_ratio:
            return self._solve(theta)
        z, unresolved = self.lookup(theta)
        if bool(unresolved.any()):  # no finite pooled score: solve those instances for real
            rows = unresolved.nonzero().flatten()
            z = z.clone()
            z[rows] = self._solve(theta[rows]).to(z)
            return z
        self.pool_answers += 1
        return z

    def _solve(self, theta: Tensor) -> Tensor:
        z = self.solver(theta)
        self.solver_calls += 1
        self.add(z)
        return z

    @torch.no_grad()
    def lookup(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """The best pooled solution of each instance, ``z [B, *S]`` in θ's dtype, and
        ``unresolved [B]``: instances whose best pooled score is not finite (every pooled
        solution uses an entry that is +inf for a minimiser, −inf for a maximiser).

        Raises:
            SolverInputError: θ is not a floating tensor of the pool's instance shape, or
                holds NaN; the pool is empty.
        """
        if self.pool_size == 0:
            raise SolverInputError(
                "CachedSolver.lookup: the pool is empty; add solutions with .add(z) or let the "
                "solver answer first"
            )
        flat = self._check_theta(theta, "lookup").reshape(theta.shape[0], -1)  # [B, D]
        finite = torch.isfinite(flat)
        finite_part = torch.where(finite, flat, 0.0)
        plus, minus = (flat == math.inf).to(flat.dtype), (flat == -math.inf).to(flat.dtype)
        sign = -1.0 if self.sense == "min" else 1.0
        best = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)  # [B]
        best_value = torch.full((flat.shape[0],), -math.inf, dtype=flat.dtype, device=flat.device)
        chunk = max(1, _SCORES_PER_CHUNK // max(flat.shape[0], 1))  # bounds the [B, P] scores
        for start in range(0, self.pool_size, chunk):
            pool = self.pool[start : start + chunk].to(device=flat.device, dtype=flat.dtype)
            scores = finite_part @ pool.T  # [B, P']: <θ, z> over the finite entries
            if not bool(finite.all()):  # a used +inf (-inf) entry makes the score +inf (-inf)
                scores = scores.masked_fill(plus @ pool.T > 0, math.inf)
                scores = scores.masked_fill(minus @ pool.T > 0, -math.inf)
            value, index = (sign * scores).max(dim=1)  # [B]: the first best in the chunk
            better = value > best_value  # strict: an earlier solution keeps a tie
            best = torch.where(better, index + start, best)
            best_value = torch.where(better, value, best_value)
        z = self.pool.index_select(0, best.to(self.pool.device)).to(flat).reshape(theta.shape)
        return z, torch.logical_not(torch.isfinite(best_value))

    @torch.no_grad()
    def add(self, z: Tensor) -> int:
        """Add solutions ``z [N, *S]`` to the pool; returns how many were new.

        Entries are 0/1, or for a solver of integer vectors (``values="integer"``, such as
        ``ranking``) integers in [0, 2^24] (exact in the float32 pool). The first solutions fix
        the pool's instance shape ``S``. With ``max_size``, the oldest solutions leave once the
        pool is full.

        Raises:
            SolverInputError: ``z`` is not a tensor of such entries of the pool's instance shape.
        """
        what = "0/1 entries" if self.values == "binary" else "integer entries in [0, 2^24]"
        if not isinstance(z, Tensor) or z.dim() < 2:
            raise SolverInputError(
                f"CachedSolver.add: expected solutions as a tensor [N, *S] of {what}, got "
                + (f"shape {tuple(z.shape)}" if isinstance(z, Tensor) else type(z).__name__)
            )
        self._check_instance_shape(tuple(z.shape[1:]), "add", "solutions")
        flat = z.detach().reshape(z.shape[0], -1)
        if self.values == "binary":
            bad = (flat != 0) & (flat != 1)
        else:
            bad = (flat != torch.round(flat)) | (flat < 0) | (flat > _LARGEST_POOLED_INTEGER)
        if bool(bad.any()):
            kind = (
                "indicators of the chosen items, edges or vertices"
                if self.values == "binary"
                else "the solver's integer solutions, such as ranks"
            )
            raise SolverInputError(
                f"CachedSolver.add: solutions must have {what} ({kind}), found e.g. "
                f"{flat[bad].unique()[:3].tolist()}"
            )
        if self.values == "binary":
            keys = np.packbits(flat.to(device="cpu", dtype=torch.bool).numpy(), axis=1)
        else:
            keys = flat.to(device="cpu", dtype=torch.int32).numpy()  # [N, D]
        new_rows = []
        for row, key in enumerate(map(bytes, keys)):
            if key not in self._keys:
                self._keys[key] = None
                new_rows.append(row)
        if not new_rows:
            return 0
        rows = flat[new_rows].to(device=self.pool.device, dtype=torch.float32)  # [N', D]
        pool = torch.cat([self.pool.reshape(-1, rows.shape[1]), rows])
        if self.max_size is not None and len(self._keys) > self.max_size:
            excess = len(self._keys) - self.max_size
            for key in list(self._keys)[:excess]:
                del self._keys[key]
            pool = pool[excess:]
        self.pool = pool
        return len(new_rows)

    def clear(self) -> None:
        """Empty the pool (keeping its instance shape) and reset the call counters."""
        self.pool = self.pool.new_zeros(0, self.pool.shape[1] if self.pool.dim() == 2 else 0)
        self._keys.clear()
        self.solver_calls = self.pool_answers = 0

    def _check_theta(self, theta: object, where: str) -> Tensor:
        if not isinstance(theta, Tensor) or not theta.is_floating_point() or theta.dim() < 2:
            raise SolverInputError(
                f"CachedSolver.{where}: theta must be a floating tensor [B, *S], got "
                + (
                    f"dtype {theta.dtype}, shape {tuple(theta.shape)}"
                    if isinstance(theta, Tensor)
                    else type(theta).__name__
                )
            )
        self._check_instance_shape(tuple(theta.shape[1:]), where, "theta")
        if bool(torch.isnan(theta).any()):
            raise SolverInputError(
                f"CachedSolver.{where}: theta contains NaN; check the network producing it"
            )
        return theta

    def _check_instance_shape(self, shape: tuple[int, ...], where: str, what: str) -> None:
        if self.instance_shape is None:
            self.instance_shape = shape
        elif shape != self.instance_shape:
            raise SolverInputError(
                f"CachedSolver.{where}: {what} has instance shape {list(shape)} but the pool "
                f"holds solutions of shape {list(self.instance_shape)}; a pool serves one "
                "problem size (use one CachedSolver per size)"
            )
