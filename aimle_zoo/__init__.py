"""aimle-zoo: combinatorial solvers as differentiable PyTorch layers (AIMLE and relatives)."""

from .solvers import (
    SolverInputError as SolverInputError,
    get_solver as get_solver,
    list_solvers as list_solvers,
    register_solver as register_solver,
)

__version__ = "0.1.0"
