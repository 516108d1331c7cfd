"""Batched combinatorial solvers and the solver plugin registry.

Every solver maps ``theta [B, *S]`` to a solution ``z [B, *S]``: an indicator in {0, 1}, or an
integer vector for a solver registered with ``values="integer"`` (``ranking``). Built-ins register
on import; third-party solvers register with :func:`register_solver` or through the
``aimle_zoo.solvers`` entry-point group.
"""

from ._base import (
    EXACT_DISTRIBUTION_METHODS as EXACT_DISTRIBUTION_METHODS,
    SOLUTION_VALUES as SOLUTION_VALUES,
    FunctionSolver as FunctionSolver,
    Sense as Sense,
    SolutionValues as SolutionValues,
    Solver as Solver,
    SolverFn as SolverFn,
    SolverInputError as SolverInputError,
    SolverSpec as SolverSpec,
    check_theta as check_theta,
    checks_enabled as checks_enabled,
    format_instances as format_instances,
    has_exact_distribution as has_exact_distribution,
    may_hold_bad_values as may_hold_bad_values,
    solver_method as solver_method,
    solver_sense as solver_sense,
    solver_spec as solver_spec,
    solver_values as solver_values,
)
from ._registry import (
    ENTRY_POINT_GROUP as ENTRY_POINT_GROUP,
    SolverPluginError as SolverPluginError,
    UnknownSolverError as UnknownSolverError,
    get_solver as get_solver,
    get_solver_spec as get_solver_spec,
    list_solvers as list_solvers,
    load_plugins as load_plugins,
    register_solver as register_solver,
    solver_registry as solver_registry,
)
from .assignment import (
    LinearAssignment as LinearAssignment,
    MinimumAssignment as MinimumAssignment,
    sinkhorn_assignment as sinkhorn_assignment,
    sorting_weights as sorting_weights,
)

# Built-in solvers register themselves on import (one line per module below).
from .cache import CachedSolver as CachedSolver
from .ranking import Ranking as Ranking, ranks as ranks, soft_ranks as soft_ranks
from .reference.assignment import LinearAssignmentScipy as LinearAssignmentScipy
from .reference.spanning_tree import SpanningTreeScipy as SpanningTreeScipy
from .shortest_path import (
    GraphShortestPath as GraphShortestPath,
    GridShortestPath as GridShortestPath,
    ShortestPath as ShortestPath,
)
from .spanning_tree import (
    MinimumSpanningTree as MinimumSpanningTree,
    SpanningTree as SpanningTree,
    SpanningTreeEdges as SpanningTreeEdges,
    edges_to_matrix as edges_to_matrix,
    matrix_to_edges as matrix_to_edges,
    num_nodes_from_edges as num_nodes_from_edges,
)
from .topk import TopK as TopK
