"""NumPy top-k by stable argsort: the test oracle of :class:`aimle_zoo.solvers.TopK`.

Independent of the tensor formulation: it sorts every row (``O(n log n)``) instead of
thresholding at the k-th largest value.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["topk_argsort"]


def topk_argsort(theta: Tensor, k: int, ties: str = "exact") -> Tensor:
    """Top-k indicator over the last dimension: ``θ [*, n] -> z [*, n]`` with θ's dtype.

    ``ties="exact"``: the first k positions of a stable descending argsort, i.e. exactly k ones
    with the lowest indices winning ties. ``ties="threshold"``: ``z = [θ >= θ_(k)]`` with
    ``θ_(k)`` the k-th largest value of the row (the n-k-th of the ascending sort).
    """
    values = theta.detach().cpu().double().numpy()  # [*, n], exact for every float dtype
    n = values.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if ties == "exact":
        order = np.argsort(-values, axis=-1, kind="stable")[..., :k]  # [*, k]
        chosen = np.zeros(values.shape, dtype=bool)
        np.put_along_axis(chosen, order, True, axis=-1)
    elif ties == "threshold":
        kth = np.sort(values, axis=-1)[..., n - k : n - k + 1]  # [*, 1]
        chosen = values >= kth
    else:
        raise ValueError(f"ties must be 'exact' or 'threshold', got {ties!r}")
    return torch.from_numpy(chosen).to(dtype=theta.dtype, device=theta.device)
