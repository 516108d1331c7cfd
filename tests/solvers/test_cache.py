"""CachedSolver: pooled answers against brute force, the solve-or-look-up draws, the pool's
bookkeeping, training through an estimator, export and bad input."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from aimle_zoo import AIMLE, CachedSolver, DifferentiableSolver, FenchelYoungLoss, build_estimator
from aimle_zoo.estimators.fidelity import topk_states
from aimle_zoo.export import NonExportableSolverError, to_onnx, to_torchscript, verify
from aimle_zoo.solvers import SolverInputError, get_solver

from ..estimators._helpers import CountingSolver, numpy_topk


def brute_force_best(theta: np.ndarray, pool: np.ndarray, sense: str) -> np.ndarray:
    """Independent oracle: the objective ⟨θ, z⟩ of the best pooled solution of each row, by
    a Python loop over the pool (entries a solution does not use contribute nothing)."""
    best = []
    for row in theta.reshape(theta.shape[0], -1):
        values = [
            sum(float(row[i]) for i in np.flatnonzero(z)) for z in pool.reshape(len(pool), -1)
        ]
        best.append(min(values) if sense == "min" else max(values))
    return np.array(best)


def objective(theta: Tensor, z: Tensor) -> Tensor:
    return (theta * z).reshape(theta.shape[0], -1).sum(dim=1)


@pytest.mark.parametrize(
    ("name", "shape", "params"), [("topk", (16, 9), {"k": 3}), ("dijkstra", (16, 5, 5), {})]
)
def test_lookup_finds_the_best_pooled_solution_by_brute_force(
    name: str, shape: tuple[int, ...], params: dict[str, int]
) -> None:
    generator = torch.Generator().manual_seed(0)
    cache = CachedSolver(name, solve_ratio=0.0, **params)
    cache.add(cache.solver(torch.rand(40, *shape[1:], generator=generator, dtype=torch.float64)))
    theta = torch.rand(shape, generator=generator, dtype=torch.float64)
    z, unresolved = cache.lookup(theta)
    assert not bool(unresolved.any())
    pool = cache.pool.numpy()
    assert z.shape == theta.shape and z.dtype == theta.dtype
    # every answer is a pooled solution, and the best one
    assert {tuple(row) for row in z.reshape(shape[0], -1).tolist()} <= {
        tuple(row) for row in pool.tolist()
    }
    expected = brute_force_best(theta.numpy(), pool, cache.sense)
    np.testing.assert_allclose(objective(theta, z).numpy(), expected, rtol=1e-12)


def test_a_pool_holding_every_solution_answers_exactly() -> None:
    """All C(8, 3) subsets pooled: the looked-up top-3 is NumPy's argsort top-3."""
    cache = CachedSolver("topk", solve_ratio=0.0, k=3)
    assert cache.add(topk_states(8, 3)) == math.comb(8, 3)
    theta = torch.randn(50, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = cache(theta)
    np.testing.assert_array_equal(z.numpy(), numpy_topk(theta.numpy(), 3))
    assert (cache.solver_calls, cache.pool_answers) == (0, 1)


def test_a_minimiser_gets_the_cheapest_pooled_path_checked_with_networkx() -> None:
    """Grid paths pooled from 30 random maps; a map whose own path is pooled gets a path as
    cheap as networkx's shortest path (vertex costs, 8-neighbourhood, both ends counted)."""
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(30, 4, 4, generator=generator, dtype=torch.float64)
    cache = CachedSolver("dijkstra", solve_ratio=0.0)
    assert cache.sense == "min"
    cache.add(cache.solver(maps))
    z = cache(maps[:5])
    for costs, path in zip(maps[:5].numpy(), z.numpy(), strict=True):
        graph = nx.DiGraph()
        for i, j in np.ndindex(4, 4):
            for di, dj in [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)]:
                if 0 <= i + di < 4 and 0 <= j + dj < 4:
                    graph.add_edge((i, j), (i + di, j + dj), weight=costs[i + di, j + dj])
        cheapest = costs[0, 0] + nx.dijkstra_path_length(graph, (0, 0), (3, 3))
        assert float((costs * path).sum()) == pytest.approx(cheapest, rel=1e-12)


def _adjacency_path(*nodes: int) -> Tensor:
    z = torch.zeros(1, 4, 4, dtype=torch.float64)
    for tail, head in itertools.pairwise(nodes):
        z[0, tail, head] = 1.0
    return z


class NetworkxPath:
    """A user's solver: the cheapest 0 -> V-1 path of each dense cost matrix, +inf meaning
    "no edge", so each instance has its own graph (networkx's Dijkstra)."""

    sense = "min"

    def __call__(self, theta: Tensor) -> Tensor:
        z = torch.zeros_like(theta)
        for b, costs in enumerate(theta.numpy()):
            graph = nx.DiGraph()
            for tail, head in zip(*np.nonzero(np.isfinite(costs)), strict=True):
                graph.add_edge(int(tail), int(head), weight=float(costs[tail, head]))
            z[b] = _adjacency_path(*nx.dijkstra_path(graph, 0, len(costs) - 1))[0]
        return z


INF = math.inf
FULL = torch.tensor(
    [[INF, 1.0, 5.0, 9.0], [INF, INF, 1.0, 5.0], [INF, INF, INF, 1.0], [INF] * 4],
    dtype=torch.float64,
)
CUT = FULL.clone().index_fill_(1, torch.tensor([2]), INF)  # no edge into vertex 2


def test_a_pooled_path_through_a_missing_edge_is_never_chosen() -> None:
    """The pooled path 0-1-2-3 uses edges this graph lacks (+inf), so the pool answers with
    its other path, 0-3."""
    cache = CachedSolver(NetworkxPath(), solve_ratio=0.0)
    assert cache.sense == "min"
    cache.add(torch.cat([_adjacency_path(0, 1, 2, 3), _adjacency_path(0, 3)]))
    z = cache(CUT.unsqueeze(0))
    np.testing.assert_array_equal(z.numpy(), _adjacency_path(0, 3).numpy())
    assert (cache.solver_calls, cache.pool_answers) == (0, 1)


def test_an_instance_without_a_usable_pooled_solution_is_solved() -> None:
    """Only 0-1-2-3 pooled: the graph without edges into 2 goes to the solver (0-1-3), the
    full graph is answered from the pool, and the new path joins the pool."""
    cache = CachedSolver(NetworkxPath(), solve_ratio=0.0)
    cache.add(_adjacency_path(0, 1, 2, 3))
    z = cache(torch.stack([FULL, CUT]))
    np.testing.assert_array_equal(z[0].numpy(), _adjacency_path(0, 1, 2, 3)[0].numpy())
    np.testing.assert_array_equal(z[1].numpy(), _adjacency_path(0, 1, 3)[0].numpy())
    assert (cache.solver_calls, cache.pool_answers) == (1, 0)
    assert cache.pool_size == 2


def test_adjacency_costs_off_the_graph_do_not_poison_the_scores() -> None:
    """graph_shortest_path on a boolean adjacency ignores its ±inf entries off the graph: the
    pool scores them as unused (0·inf is not NaN) and answers with the solver's own path."""
    edges = torch.isfinite(FULL)
    cache = CachedSolver("graph_shortest_path", solve_ratio=0.0, adjacency=edges, source=0)
    generator = torch.Generator().manual_seed(3)
    costs = (torch.rand(12, 4, 4, generator=generator, dtype=torch.float64) + 0.1).masked_fill(
        ~edges, INF
    )
    cache.add(cache.solver(costs))
    z = cache(costs)
    np.testing.assert_array_equal(z.numpy(), cache.solver(costs).numpy())
    assert cache.pool_answers == 1


def test_the_share_of_solver_calls_follows_solve_ratio_and_a_seed_repeats_it() -> None:
    """2,000 training calls at solve_ratio 0.3: the solver count is Binomial(1999, 0.3) after
    the first call (an empty pool always solves), within five standard deviations; the same
    generator seed gives the same sequence of choices."""
    theta = torch.randn(4, 10, generator=torch.Generator().manual_seed(4))
    runs = []
    for _ in range(2):
        counting = CountingSolver(k=2)
        cache = CachedSolver(counting, 0.3, generator=torch.Generator().manual_seed(5))
        for _ in range(2000):
            cache(theta)
        runs.append((cache.solver_calls, cache.pool_answers))
        assert cache.solver_calls == len(counting.rows)
    calls, answers = runs[0]
    assert calls + answers == 2000 and runs[1] == runs[0]
    mean, sd = 1 + 1999 * 0.3, math.sqrt(1999 * 0.3 * 0.7)
    assert abs(calls - mean) < 5 * sd


def test_eval_mode_always_calls_the_solver_and_leaves_the_pool_alone() -> None:
    counting = CountingSolver(k=2)
    cache = CachedSolver(counting, solve_ratio=0.0)
    cache.add(topk_states(5, 2, dtype=torch.float32)[:3])
    cache.eval()
    theta = torch.randn(6, 5)
    z = cache(theta)
    np.testing.assert_array_equal(z.numpy(), numpy_topk(theta.numpy(), 2))
    assert counting.rows == [6] and cache.pool_size == 3
    assert (cache.solver_calls, cache.pool_answers) == (0, 0)


def test_add_keeps_distinct_solutions_and_max_size_drops_the_oldest() -> None:
    states = topk_states(6, 2, dtype=torch.float32)  # 15 distinct rows
    doubled = torch.cat([states, states.flip(0)])
    cache = CachedSolver("topk", k=2)
    assert cache.add(doubled) == 15 and cache.pool_size == 15
    assert len(torch.unique(cache.pool, dim=0)) == 15  # oracle: torch.unique
    assert cache.add(states[:4]) == 0
    bounded = CachedSolver("topk", k=2, max_size=5)
    bounded.add(states[:8])
    np.testing.assert_array_equal(bounded.pool.numpy(), states[3:8].numpy())
    assert bounded.add(states[:1]) == 1  # state 0 had left, so it is new again
    np.testing.assert_array_equal(bounded.pool.numpy(), states[[4, 5, 6, 7, 0]].numpy())
    bounded.clear()
    assert bounded.pool_size == 0 and bounded.solver_calls == bounded.pool_answers == 0


def test_training_through_aimle_on_a_cache_learns_the_target_subset() -> None:
    """θ itself is learnt so that top-3 of 10 hits a target subset, with 80% of the solver
    calls (forward and AIMLE's target solutions) answered from a pool that starts empty."""
    torch.manual_seed(6)
    target = torch.zeros(1, 10)
    target[0, [1, 4, 7]] = 1.0
    cache = CachedSolver("topk", solve_ratio=0.2, k=3)
    layer = DifferentiableSolver(cache, AIMLE(samples=4))
    theta = nn.Parameter(0.1 * torch.randn(1, 10))
    assert not torch.equal(layer.eval()(theta.detach()), target)
    layer.train()
    optimizer = torch.optim.Adam([theta], lr=0.1)
    for _ in range(150):
        optimizer.zero_grad()
        z = layer(theta)  # [4, 10]
        ((z - target) ** 2).sum(dim=1).mean().backward()
        optimizer.step()
    layer.eval()
    np.testing.assert_array_equal(layer(theta.detach()).numpy(), target.numpy())
    assert cache.pool_answers > 2 * cache.solver_calls


def test_the_pool_is_not_part_of_the_state_dict() -> None:
    layer = DifferentiableSolver(CachedSolver("topk", k=2), "aimle")
    plain = DifferentiableSolver("topk", "aimle", k=2)
    layer.solver.add(topk_states(5, 2, dtype=torch.float32))
    assert set(layer.state_dict()) == set(plain.state_dict())


def test_a_model_holding_a_cache_exports_its_solver(tmp_path: Path) -> None:
    """Export sees the wrapped solver (eval mode calls only it): both formats verify; a
    non-exportable wrapped solver stops export with its own name."""
    model = nn.Sequential(
        nn.Linear(4, 9), DifferentiableSolver(CachedSolver("topk", 0.1, k=3))
    ).eval()
    example = (torch.randn(2, 4),)
    to_onnx(model, tmp_path / "model.onnx", example_inputs=example)
    to_torchscript(model, tmp_path / "model.pt", example_inputs=example)
    for artefact in ("model.onnx", "model.pt"):
        assert verify(model, tmp_path / artefact).max_abs_diff == 0.0
    grid = nn.Sequential(
        nn.Linear(4, 16), nn.Unflatten(1, (4, 4)), CachedSolver("dijkstra_scipy", 0.1)
    ).eval()
    with pytest.raises(NonExportableSolverError, match="'dijkstra_scipy'"):
        to_onnx(grid, tmp_path / "grid.onnx", example_inputs=example)
    assert not (tmp_path / "grid.onnx").exists()


def test_bad_input_gets_a_clear_error_and_changes_nothing() -> None:
    with pytest.raises(ValueError, match=r"solve_ratio .* in \[0, 1\]"):
        CachedSolver("topk", 1.5, k=2)
    with pytest.raises(TypeError, match="solve_ratio must be a number"):
        CachedSolver("topk", "0.5", k=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_size"):
        CachedSolver("topk", k=2, max_size=0)
    with pytest.raises(ValueError, match="sense"):
        CachedSolver("topk", k=2, sense="minimum")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only used with a solver name"):
        CachedSolver(get_solver("topk", k=2), k=2)
    per_instance = get_solver(
        "graph_shortest_path", adjacency=torch.isfinite(FULL), target=torch.tensor([3, 2])
    )
    with pytest.raises(ValueError, match=r"per-instance data .* multiples of 2"):
        CachedSolver(per_instance)
    cache = CachedSolver("topk", 0.0, k=2)
    with pytest.raises(SolverInputError, match="pool is empty"):
        cache.lookup(torch.randn(3, 5))
    cache.add(topk_states(5, 2, dtype=torch.float32))
    with pytest.raises(SolverInputError, match="0/1 entries"):
        cache.add(torch.full((1, 5), 0.5))
    with pytest.raises(SolverInputError, match=r"instance shape \[6\] .* shape \[5\]"):
        cache(torch.randn(3, 6))
    with pytest.raises(SolverInputError, match="NaN"):
        cache(torch.tensor([[0.0, math.nan, 1.0, 2.0, 3.0]]))
    with pytest.raises(SolverInputError, match="floating tensor"):
        cache.lookup(torch.ones(3, 5, dtype=torch.long))
    assert cache.pool_size == 10 and cache.solver_calls == cache.pool_answers == 0


@pytest.mark.parametrize("estimator", ["aimle", "imle", "ste", "perturbed", "blackbox", "relaxed"])
@pytest.mark.parametrize("solve_ratio", [1.0, 0.0])
def test_a_cache_that_answers_exactly_changes_no_estimator(
    estimator: str, solve_ratio: float
) -> None:
    """Always solving, or looking up in a pool of all C(7, 3) subsets, the cache returns the
    solver's answers: every estimator's samples and gradient are the plain solver's (the same
    global random stream; the cache draws from its own generator)."""
    theta = torch.randn(5, 7, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    weights = torch.randn(7, dtype=torch.float64)
    results = []
    for cached in (False, True):
        solver = get_solver("topk", k=3)
        if cached:
            solver = CachedSolver(solver, solve_ratio, generator=torch.Generator())
            solver.add(topk_states(7, 3))
        built = {"name": estimator, "hard": True} if estimator == "relaxed" else estimator
        layer = DifferentiableSolver(solver, build_estimator(built))
        leaf = theta.clone().requires_grad_()
        torch.manual_seed(8)
        z = layer(leaf)
        ((z * weights) ** 2).sum().backward()
        results.append((z.detach(), leaf.grad))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def test_a_look_up_in_chunks_finds_the_same_best_and_keeps_the_first_of_ties(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two pooled solutions at a time (the bound on the [B, P] scores set tiny): the answers
    are the brute-force best, and on a tie (equal θ) the earliest pooled solution."""
    monkeypatch.setattr("aimle_zoo.solvers.cache._SCORES_PER_CHUNK", 6)
    states = topk_states(6, 2)  # 15 rows, lexicographic
    order = torch.randperm(15, generator=torch.Generator().manual_seed(9))
    cache = CachedSolver("topk", 0.0, k=2)
    cache.add(states[order])
    theta = torch.randn(3, 6, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    z, unresolved = cache.lookup(theta)
    expected = brute_force_best(theta.numpy(), cache.pool.numpy(), "max")
    np.testing.assert_allclose(objective(theta, z).numpy(), expected, rtol=1e-12)
    tied, _ = cache.lookup(torch.ones(3, 6))
    np.testing.assert_array_equal(tied.numpy(), states[order[0]].expand(3, 6).numpy())
    assert not bool(unresolved.any())


def test_the_fenchel_young_loss_takes_a_cache() -> None:
    """The loss calls its solver through the cache like an estimator does: with a complete
    pool and no solver calls, loss and gradient are the plain solver's."""
    theta = torch.randn(4, 7, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    target = get_solver("topk", k=3)(torch.randn(4, 7, dtype=torch.float64))
    results = []
    for cached in (False, True):
        solver = get_solver("topk", k=3)
        if cached:
            solver = CachedSolver(solver, 0.0, generator=torch.Generator())
            solver.add(topk_states(7, 3))
        leaf = theta.clone().requires_grad_()
        torch.manual_seed(12)
        loss = FenchelYoungLoss(solver, sigma=0.5, samples=8)(leaf, target)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
        if cached:
            assert (solver.solver_calls, solver.pool_answers) == (0, 1)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def test_integer_solutions_are_pooled_and_looked_up_exactly() -> None:
    """A solver of integer vectors (ranks) pools its solutions; the look-up returns the pooled
    ranking that scores best, which is the solver's own ranking once it is in the pool."""
    generator = torch.Generator().manual_seed(0)
    cached = CachedSolver("ranking", solve_ratio=0.0)
    assert cached.values == "integer"
    theta = torch.randn(6, 5, generator=generator)
    solved = get_solver("ranking")(theta)
    assert cached.add(solved) == 6 and cached.add(solved) == 0  # distinct rankings only
    z, unresolved = cached.lookup(theta)
    torch.testing.assert_close(z, solved, rtol=0, atol=0)
    assert not bool(unresolved.any())
    other = torch.randn(3, 5, generator=generator)
    z, _ = cached.lookup(other)
    scores = other @ cached.pool.T  # [3, P]
    torch.testing.assert_close((other * z).sum(1), scores.max(1).values)
    with pytest.raises(SolverInputError, match="integer entries in \\[0, 2\\^24\\]"):
        cached.add(solved / 2)
    with pytest.raises(SolverInputError, match="integer entries"):
        cached.add(-solved)
    with pytest.raises(SolverInputError, match="0/1 entries"):
        CachedSolver("topk", k=2).add(solved)
