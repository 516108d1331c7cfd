"""Ranks by ``scipy.stats.rankdata``: the test oracle and benchmark baseline of
:class:`aimle_zoo.solvers.Ranking`.

Independent of the tensor formulation: scipy's ``"ordinal"`` ranks number equal values in the
order they appear, the solver's tie rule, computed in C on the rows of a NumPy copy.
"""

from __future__ import annotations

import torch
from scipy.stats import rankdata
from torch import Tensor

__all__ = ["ranks_scipy"]


def ranks_scipy(theta: Tensor, descending: bool = False) -> Tensor:
    """Ranks 1..n over the last dimension: ``θ [*, n] -> z [*, n]`` with θ's dtype and device;
    rank 1 for the smallest value, or for the largest with ``descending``; ties in index order.
    """
    values = theta.detach().cpu().double().numpy()  # [*, n], exact for every float dtype
    ordinal = rankdata(-values if descending else values, axis=-1, method="ordinal")
    return torch.from_numpy(ordinal).to(dtype=theta.dtype, device=theta.device)
