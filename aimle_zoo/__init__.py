"""aimle-zoo: combinatorial solvers as differentiable PyTorch layers (AIMLE and relatives).

Example::

    import torch
    from aimle_zoo import AIMLE, AdaptiveTarget, DifferentiableSolver

    layer = DifferentiableSolver("topk", AIMLE(target=AdaptiveTarget(target_norm=2.0)), k=3)
    z = layer(torch.randn(8, 10, requires_grad=True))  # [8, 10] k-subset indicators
"""

from ._names import UnknownNameError as UnknownNameError
from .estimators import (
    AIMLE as AIMLE,
    IMLE as IMLE,
    SIMPLE as SIMPLE,
    STE as STE,
    AdaptiveTarget as AdaptiveTarget,
    Blackbox as Blackbox,
    DifferentiableSolver as DifferentiableSolver,
    Estimator as Estimator,
    FenchelYoungLoss as FenchelYoungLoss,
    FixedTarget as FixedTarget,
    Gaussian as Gaussian,
    Gumbel as Gumbel,
    PerturbedOptimizer as PerturbedOptimizer,
    Relaxed as Relaxed,
    SumOfGamma as SumOfGamma,
    aimle as aimle,
    blackbox as blackbox,
    build_estimator as build_estimator,
    expand_samples as expand_samples,
    imle as imle,
    list_estimators as list_estimators,
    make_noise as make_noise,
    mean_over_samples as mean_over_samples,
    perturbed as perturbed,
    relaxed as relaxed,
    simple as simple,
    ste as ste,
)
from .hub import (
    from_pretrained as from_pretrained,
    push_to_hub as push_to_hub,
    read_card_metrics as read_card_metrics,
)
from .solvers import (
    CachedSolver as CachedSolver,
    SolverInputError as SolverInputError,
    get_solver as get_solver,
    list_solvers as list_solvers,
    register_solver as register_solver,
)

__version__ = "0.5.0"
