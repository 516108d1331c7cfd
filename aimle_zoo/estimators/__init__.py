"""Gradient estimators that make any batched MAP solver ``theta -> z`` differentiable.

* :class:`AIMLE`: Adaptive Implicit MLE (adaptive or fixed target, forward or central
  difference), the default.
* :class:`IMLE`: Implicit MLE with a fixed target step.
* :class:`STE`: straight-through estimator over perturb-and-MAP.
* :class:`PerturbedOptimizer`: perturbed optimizers (Berthet et al., 2020).
* :class:`Blackbox`: blackbox differentiation (Vlastelica et al., 2020).
* :class:`Relaxed`: backpropagation through a continuous relaxation of the solver
  (Gumbel-softmax, continuous top-k, stochastic softmax tricks), the classic baselines.
* :class:`SIMPLE`: exact samples forward, the gradient of the exact marginals backward
  (solvers with an exact sampler: top-k).

:class:`FenchelYoungLoss` is the perturbed Fenchel–Young loss, for training θ directly on
target solutions.

Every estimator maps θ ``[B, *S]`` to ``[B·N, *S]`` solutions, sample-minor (see
:func:`expand_samples`). :class:`DifferentiableSolver` composes a solver and an estimator into a
layer that uses the plain solver in eval mode and for export; :func:`gradient_fidelity` compares
an estimator's gradient with the exact one on a tiny instance; the decorators (:func:`aimle`,
:func:`imle`, :func:`ste`, :func:`perturbed`, :func:`blackbox`, :func:`relaxed`,
:func:`simple`) wrap a bare function.
"""

from ._aimle import AIMLE as AIMLE
from ._base import (
    MINIMIZER_NOISE as MINIMIZER_NOISE,
    Estimator as Estimator,
    SolverOutputError as SolverOutputError,
    expand_samples as expand_samples,
    mean_over_samples as mean_over_samples,
)
from ._blackbox import Blackbox as Blackbox
from ._imle import IMLE as IMLE
from ._perturbed import PerturbedOptimizer as PerturbedOptimizer
from ._relaxed import (
    Relaxation as Relaxation,
    RelaxationError as RelaxationError,
    Relaxed as Relaxed,
)
from ._simple import SIMPLE as SIMPLE
from ._ste import STE as STE
from .decorators import (
    DifferentiableFunction as DifferentiableFunction,
    aimle as aimle,
    blackbox as blackbox,
    imle as imle,
    perturbed as perturbed,
    relaxed as relaxed,
    simple as simple,
    ste as ste,
)
from .fenchel_young import FenchelYoungLoss as FenchelYoungLoss
from .fidelity import (
    FidelityReport as FidelityReport,
    exact_expected_gradient as exact_expected_gradient,
    gradient_fidelity as gradient_fidelity,
    solution_states as solution_states,
    topk_states as topk_states,
)
from .layer import DifferentiableSolver as DifferentiableSolver
from .noise import (
    Gaussian as Gaussian,
    Gumbel as Gumbel,
    Noise as Noise,
    SumOfGamma as SumOfGamma,
    UnknownNoiseError as UnknownNoiseError,
    list_noises as list_noises,
    make_noise as make_noise,
)
from .registry import (
    UnknownEstimatorError as UnknownEstimatorError,
    build_estimator as build_estimator,
    list_estimators as list_estimators,
)
from .targets import (
    AdaptiveTarget as AdaptiveTarget,
    FixedTarget as FixedTarget,
    Target as Target,
    UnknownTargetError as UnknownTargetError,
    make_target as make_target,
)
