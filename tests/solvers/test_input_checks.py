"""The shared input checks of the solvers: :func:`check_theta` and :func:`format_instances`."""

from __future__ import annotations

import pytest
import torch

from aimle_zoo.solvers import GraphShortestPath, SolverInputError, check_theta, format_instances


def test_format_instances_lists_up_to_the_limit_then_the_total() -> None:
    assert format_instances([]) == ""
    assert format_instances(range(8)) == "0, 1, 2, 3, 4, 5, 6, 7"  # exactly the limit: all
    assert format_instances(range(9)) == "0, 1, 2, 3, 4, 5, 6, 7, ... (9 in all)"
    assert format_instances([5, 2, 7], limit=2) == "5, 2, ... (3 in all)"
    mask = torch.tensor([False, True, False, True])
    assert format_instances(mask) == "1, 3"  # a boolean [B] tensor: its true entries
    assert format_instances(torch.tensor([4, 0])) == "4, 0"


def test_check_theta_names_every_bad_instance_up_to_eight() -> None:
    theta = torch.zeros(12, 3)
    theta[1:11, 0] = float("nan")
    with pytest.raises(
        SolverInputError,
        match=r"NaN or inf values in instance\(s\) 1, 2, 3, 4, 5, 6, 7, 8, \.\.\. \(10 in all\);",
    ):
        check_theta(theta, solver="demo")
    assert check_theta(torch.zeros(2, 3), solver="demo").shape == (2, 3)


def test_an_input_allowed_inf_is_refused_for_nan_only() -> None:
    """With ``allow_inf`` (an adjacency's entries off the graph) only NaN is refused, and the
    message says NaN alone."""
    theta = torch.tensor([[1.0, float("inf")], [float("nan"), 0.0]])
    with pytest.raises(SolverInputError, match=r"contains NaN values in instance\(s\) 1;"):
        check_theta(theta, solver="demo", allow_inf=True)
    assert check_theta(theta[:1], solver="demo", allow_inf=True) is not None
    solver = GraphShortestPath(adjacency=torch.tensor([[False, True], [False, False]]))
    costs = torch.tensor([[[0.0, float("nan")], [0.0, 0.0]]])  # NaN on the edge 0 -> 1
    with pytest.raises(SolverInputError, match=r"graph_shortest_path: input contains NaN values"):
        solver(costs)


def test_only_minus_inf_gets_the_masking_advice() -> None:
    theta = torch.zeros(2, 4)
    theta[0, 1] = float("-inf")
    with pytest.raises(SolverInputError, match=r"the only such values are -inf"):
        check_theta(theta, solver="demo")
    theta[1, 2] = float("inf")
    with pytest.raises(SolverInputError, match=r"check the network producing theta"):
        check_theta(theta, solver="demo")
