"""The exact distribution over k-subsets, the top-k solver's exponential family.

    p(z) = exp(⟨θ, z⟩/τ) / Z_k(θ/τ)   on {z ∈ {0,1}^n : Σ z = k},   per row of θ [*, n].

With x = θ/τ, the normaliser is the elementary symmetric polynomial of the weights e^x,
Z_k = e_k(e^{x_1}, …, e^{x_n}), and the prefix tables E_i[j] = log e_j(e^{x_1}, …, e^{x_i})
follow the recursion (item i is in the subset or it is not)

    E_i[j] = logaddexp(E_{i−1}[j], E_{i−1}[j−1] + x_i),   E_0[0] = 0,   E_0[j > 0] = −∞,

n steps over ``[rows, k + 1]`` in log space, so no weight overflows. From them:

* marginals: μ_i = p(z_i = 1) = e^{x_i} e_{k−1}(all but i) / e_k, with
  e_{k−1}(all but i) = Σ_j e_j(items before i) · e_{k−1−j}(items after i) from the prefix and
  the suffix tables. Σ_i μ_i = k, μ → the top-k indicator as τ → 0, and μ is differentiable in
  θ (its Jacobian is the covariance of z over τ);
* exact samples, item by item from the last: with r items still to choose among the first i,
  p(z_i = 1 | r) = e^{x_i} e_{r−1}(first i − 1) / e_r(first i).

The impossible table entries (j > i) hold a large negative finite number rather than −∞, so
that autograd through ``logaddexp`` never meets −∞ − (−∞). Each row is shifted by its maximum
first (the distribution is unchanged), half-precision θ is computed in float32, and float32
keeps the log-weights to about 1e-7 relative: at spreads |θ/τ| of 10⁴ and more, where the
distribution is practically the top-k indicator, pass float64 θ for marginals exact to
rounding. Costs O(n·k) per row, in n sequential steps.

Reference:
    Ahmed, Zeng, Niepert, Van den Broeck. SIMPLE: A Gradient Estimator for k-Subset Sampling.
    ICLR 2023 (exact marginals and conditional sampling for k-subsets).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import SolverInputError, check_relax_temperature, check_theta

__all__ = ["sample_subsets", "subset_log_partition", "subset_marginals"]


def _working(theta: Tensor, k: int, temperature: float, label: str) -> tuple[Tensor, Tensor]:
    """(x, c): the rows ``x = (θ − c)/τ [R, n]`` shifted by their maxima ``c [R, 1]`` (no
    gradient), after the checks; half precision is computed in float32.

    The distribution does not depend on the shift (every subset has k items), and it keeps the
    log-weights near zero whatever θ's offset.
    """
    check_theta(theta, solver=label, min_ndim=1, shape_hint="[*, n] (subsets of the last dim)")
    temperature = check_relax_temperature(temperature, solver=label)
    n = theta.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise SolverInputError(
            f"{label}: k must be an int in [1, n] = [1, {n}] (n = theta.shape[-1]), got {k!r}"
        )
    if theta.dtype in (torch.float16, torch.bfloat16):
        theta = theta.float()
    rows = theta.reshape(-1, n)
    shift = rows.detach().amax(dim=1, keepdim=True)  # [R, 1]
    x = (rows - shift) / temperature
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise SolverInputError(
            f"{label}: (theta − max) / temperature overflows {x.dtype} (temperature="
            f"{temperature}, spread of theta {float((rows - shift).abs().max()):.3g}); raise "
            "the temperature or scale theta down"
        )
    return x, shift / temperature


def _impossible(dtype: torch.dtype) -> float:
    """The stand-in for log 0: far below any reachable log-weight, and finite even when three
    of them are added (the marginals add a prefix, a suffix and x_i)."""
    return torch.finfo(dtype).min / 8


def _prefix_tables(x: Tensor, k: int) -> Tensor:
    """``E [n + 1, R, k + 1]``, ``E[i, r, j] = log e_j(e^{x_r1}, …, e^{x_ri})``."""
    rows = x.shape[0]
    table = x.new_full((rows, k + 1), _impossible(x.dtype))
    table[:, 0] = 0.0
    tables = [table]
    for item in x.unbind(dim=1):  # n × [R]
        taken = table[:, :-1] + item.unsqueeze(1)  # [R, k]: item i in, j − 1 chosen before
        table = torch.cat([table[:, :1], torch.logaddexp(table[:, 1:], taken)], dim=1)
        tables.append(table)
    return torch.stack(tables)  # [n + 1, R, k + 1]


def subset_log_partition(theta: Tensor, k: int, temperature: float = 1.0) -> Tensor:
    """``log Σ_{|z| = k} exp(⟨θ, z⟩/τ)`` per row: ``θ [*, n] -> [*]`` (float32 for half θ).

    Differentiable; its gradient in θ is the marginals over τ.
    """
    x, shift = _working(theta, k, temperature, "subset_log_partition")
    log_partition = _prefix_tables(x, k)[-1, :, k] + k * shift.squeeze(1)  # [R]
    return log_partition.reshape(theta.shape[:-1])


def subset_marginals(theta: Tensor, k: int, temperature: float = 1.0) -> Tensor:
    """``μ_i = p(z_i = 1)`` under p(z) ∝ exp(⟨θ, z⟩/τ), Σz = k: ``θ [*, n] -> μ [*, n]``.

    Exact (prefix and suffix tables; see the module docstring), in θ's dtype, differentiable
    in θ; each row sums to k.
    """
    x, _ = _working(theta, k, temperature, "subset_marginals")  # [R, n]
    prefix = _prefix_tables(x, k)  # [n + 1, R, k + 1], items before i
    suffix = _prefix_tables(x.flip(1), k).flip(0)  # [n + 1, R, k + 1], items from i on
    # e_{k−1}(all but i) = Σ_{j<k} e_j(before i) · e_{k−1−j}(after i)
    others = torch.logsumexp(prefix[:-1, :, :k] + suffix[1:, :, :k].flip(2), dim=2)  # [n, R]
    log_mu = x + others.T - prefix[-1, :, k : k + 1]  # [R, n]
    return log_mu.exp().reshape(theta.shape).to(theta.dtype)


def sample_subsets(
    theta: Tensor,
    k: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    samples: int = 1,
) -> Tensor:
    """Exact samples of p(z) ∝ exp(⟨θ, z⟩/τ) over k-subsets, in {0, 1} with exactly k ones.

    ``θ [B, *S, n] -> z [B·N, *S, n]`` for N = ``samples`` independent draws of every row,
    sample-minor (row ``b·N + m`` is draw m of instance b, the estimators' layout); with N = 1,
    z has θ's shape (a 1-D θ too). θ's dtype and device; not differentiable. The N draws share
    one table pass. ``generator`` (on θ's device) makes them reproducible.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise SolverInputError(f"sample_subsets: samples must be an int >= 1, got {samples!r}")
    if samples > 1 and theta.dim() < 2:
        raise SolverInputError(
            "sample_subsets: several samples need a batch dimension, theta [B, *S, n]; got "
            f"shape {tuple(theta.shape)} (use theta.unsqueeze(0))"
        )
    with torch.no_grad():
        x, _ = _working(theta, k, temperature, "sample_subsets")  # [R, n]
        prefix = _prefix_tables(x, k)  # [n + 1, R, k + 1]
        rows, n = x.shape
        uniforms = torch.rand(
            (n, rows, samples), generator=generator, device=x.device, dtype=x.dtype
        )  # [n, R, N]
        left = torch.full((rows, samples), k, dtype=torch.int64, device=x.device)  # r
        chosen = torch.zeros(n, rows, samples, dtype=torch.bool, device=x.device)
        for item in range(n - 1, -1, -1):
            before = prefix[item].gather(1, (left - 1).clamp(min=0))  # [R, N]
            total = prefix[item + 1].gather(1, left)  # [R, N]
            probability = (x[:, item : item + 1] + before - total).exp()  # p(z_i = 1 | r)
            take = (uniforms[item] < probability) & (left > 0)
            chosen[item] = take
            left = left - take.long()
        if samples == 1:
            return chosen.squeeze(2).T.reshape(theta.shape).to(theta.dtype)
        batch = theta.shape[0]
        per_instance = chosen.reshape(n, batch, rows // batch, samples)  # [n, B, rest, N]
        return (
            per_instance.permute(1, 3, 2, 0)
            .reshape(batch * samples, *theta.shape[1:])
            .to(theta.dtype)
        )
