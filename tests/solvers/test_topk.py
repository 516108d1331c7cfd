"""TopK against brute-force enumeration of k-subsets and a stable-argsort NumPy oracle."""

from __future__ import annotations

import io
import itertools
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from aimle_zoo.solvers import (
    SolverInputError,
    TopK,
    get_solver,
    get_solver_spec,
    solver_sense,
)
from aimle_zoo.solvers.reference.topk import topk_argsort
from aimle_zoo.solvers.testing import solver_conformance_test
from aimle_zoo.solvers.topk import (
    NETWORK_MAX_ITEMS,
    _kth_largest,
    _kth_largest_by_network,
    _network_pays,
    merge_sort_network,
    selection_network,
)


def tied_scores(*shape: int, high: int = 3, dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer scores from {0, ..., high - 1}: many ties."""
    return torch.randint(0, high, shape).to(dtype)


def brute_force_lowest_index(row: list[float], k: int) -> list[float]:
    """The optimal k-subset that comes first in lexicographic order of its sorted indices."""
    subsets = itertools.combinations(range(len(row)), k)  # lexicographic order
    best = max(subsets, key=lambda chosen: sum(row[i] for i in chosen))  # first maximum
    return [1.0 if i in best else 0.0 for i in range(len(row))]


def scripted_copy(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` + save + load, as a deployment would."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


# ----------------------------------------------------------------------------- exact ties


@pytest.mark.parametrize("n", range(1, 9))
def test_exact_is_the_lowest_index_optimum_of_brute_force(n: int) -> None:
    theta = tied_scores(16, n)
    for k in range(1, n + 1):
        z = TopK(k)(theta)
        expected = torch.tensor([brute_force_lowest_index(row, k) for row in theta.tolist()])
        assert torch.equal(z, expected), f"n={n}, k={k}"


@pytest.mark.parametrize(("n", "k"), [(10, 3), (100, 10), (784, 50), (50, 50), (37, 1)])
def test_exact_matches_stable_argsort(n: int, k: int) -> None:
    theta = tied_scores(64, n, high=5)
    z = TopK(k)(theta)
    assert torch.equal(z, topk_argsort(theta, k))
    assert torch.equal(z.sum(dim=-1), torch.full((64,), float(k)))


def test_exact_on_all_equal_scores_takes_the_first_k() -> None:
    theta = torch.full((3, 9), 0.25)
    expected = torch.tensor([1.0] * 4 + [0.0] * 5).expand(3, 9)
    assert torch.equal(TopK(4)(theta), expected)


def test_exact_is_independent_of_the_batch() -> None:
    theta = tied_scores(32, 40)
    solver = TopK(7)
    whole = solver(theta)
    alone = torch.cat([solver(theta[i : i + 1]) for i in range(32)])
    assert torch.equal(whole, alone)


# ----------------------------------------------------------------------------- threshold


@pytest.mark.parametrize(("n", "k"), [(6, 2), (100, 10), (784, 50)])
def test_threshold_is_ge_the_kth_largest(n: int, k: int) -> None:
    theta = tied_scores(64, n)
    z = TopK(k, ties="threshold")(theta)
    kth = np.sort(theta.numpy(), axis=-1)[:, n - k : n - k + 1]
    assert torch.equal(z, torch.from_numpy(theta.numpy() >= kth).float())
    assert torch.equal(z, topk_argsort(theta, k, ties="threshold"))
    assert bool((z.sum(dim=-1) >= k).all())
    assert bool((z.sum(dim=-1) > k).any()), "the tied input should make some rows exceed k"


def test_threshold_selects_everything_on_all_equal_scores() -> None:
    theta = torch.zeros(2, 12)
    assert torch.equal(TopK(3, ties="threshold")(theta), torch.ones(2, 12))


def test_rules_agree_without_ties() -> None:
    theta = torch.randn(64, 100)
    assert torch.equal(TopK(10)(theta), TopK(10, ties="threshold")(theta))
    assert torch.equal(TopK(10)(theta), topk_argsort(theta, 10))


# ----------------------------------------------------------------------------- shapes, dtypes


@pytest.mark.parametrize("ties", ["exact", "threshold"])
def test_leading_dimensions(ties: str) -> None:
    theta = tied_scores(3, 4, 5, 11)
    z = TopK(4, ties=ties)(theta)
    assert z.shape == theta.shape
    flat = topk_argsort(theta.reshape(-1, 11), 4, ties=ties)
    assert torch.equal(z.reshape(-1, 11), flat)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("ties", ["exact", "threshold"])
def test_dtypes(dtype: torch.dtype, ties: str) -> None:
    theta = tied_scores(16, 30, high=4, dtype=dtype) * 0.3 - 0.5
    z = TopK(5, ties=ties)(theta)
    assert z.dtype == dtype
    assert torch.equal(z, topk_argsort(theta, 5, ties=ties))


def test_empty_batch() -> None:
    z = TopK(2)(torch.zeros(0, 5))
    assert z.shape == (0, 5)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": 0}, r"k must be in \[1, n\], got k=0"),
        ({"k": -3}, r"k must be in \[1, n\], got k=-3"),
        ({"k": 2.0}, "k must be an int"),
        ({"k": True}, "k must be an int"),
        ({"k": 2, "ties": "random"}, "unknown ties rule 'random'"),
    ],
)
def test_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        TopK(**params)


@pytest.mark.parametrize(
    ("theta", "message"),
    [
        (torch.zeros(4, 5), r"k=6 is out of range for n=5 items .* k must be in \[1, 5\]"),
        (torch.zeros(4, 7, dtype=torch.int64), "expected a floating-point tensor"),
        (torch.zeros(7), "expected at least 2 dimensions"),
        (torch.tensor([[0.0] * 7, [float("nan")] + [0.0] * 6]), r"NaN .* instance\(s\) 1"),
        (torch.tensor([[float("inf")] + [0.0] * 6]), r"NaN or inf values in instance\(s\) 0"),
    ],
)
def test_bad_input(theta: Tensor, message: str) -> None:
    with pytest.raises(SolverInputError, match=message):
        TopK(6)(theta)


# ----------------------------------------------------------------------------- registry, export


def test_registry_entry() -> None:
    spec = get_solver_spec("topk")
    assert spec.factory is TopK and spec.exportable and spec.sense == "max"
    for name in ("topk", "top_k", "k_subset"):
        solver = get_solver(name, k=2, ties="threshold")
        assert isinstance(solver, TopK) and solver_sense(solver) == "max"
        assert solver.params == {"k": 2, "ties": "threshold"}


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
@pytest.mark.parametrize("ties", ["exact", "threshold"])
def test_torchscript_round_trip(ties: str) -> None:
    eager = TopK(3, ties=ties)
    scripted = scripted_copy(eager)
    for shape in [(4, 10), (64, 10), (2, 3, 25), (1, 3)]:
        theta = tied_scores(*shape)
        assert torch.equal(scripted(theta), eager(theta)), shape


def k_subsets(theta: Tensor, k: int = 3) -> Tensor:
    """Every indicator with exactly k ones: ``[n] -> [C(n, k), n]``."""
    n = theta.shape[-1]
    rows = [
        [float(i in chosen) for i in range(n)] for chosen in itertools.combinations(range(n), k)
    ]
    return torch.tensor(rows, dtype=theta.dtype)


def tied_example(batch_size: int, generator: torch.Generator) -> tuple[dict[str, Any], Tensor]:
    return {"k": 3}, torch.randint(0, 3, (batch_size, 8), generator=generator).float()


test_topk_conformance = solver_conformance_test("topk", feasible=k_subsets)
test_topk_conformance_with_ties = solver_conformance_test(
    "topk", make_input=tied_example, feasible=k_subsets, check_gradients=False
)


@pytest.mark.parametrize("n", range(1, 17))
def test_merge_sort_network_sorts_every_binary_input(n: int) -> None:
    """The 0-1 principle: a comparator network that sorts all 2ⁿ 0/1 inputs sorts every input."""
    codes = torch.arange(2**n).unsqueeze(1)  # [2ⁿ, 1]
    wires = list(((codes >> torch.arange(n)) & 1).t().unbind(0))  # n × [2ⁿ]
    for low, high in merge_sort_network(n):
        assert low < high < n
        wires[low], wires[high] = (
            torch.minimum(wires[low], wires[high]),
            torch.maximum(wires[low], wires[high]),
        )
    result = torch.stack(wires, dim=1)  # [2ⁿ, n]
    assert torch.equal(result, result.sort(dim=1).values)


@pytest.mark.parametrize("n", range(1, 17))
def test_selection_network_finds_the_kth_largest_of_every_binary_input(n: int) -> None:
    """The pruned network's output wire is the k-th largest of all 2ⁿ 0/1 inputs, for every k
    (hence of every input, by the 0-1 principle), and it does less work than the full network."""
    codes = torch.arange(2**n).unsqueeze(1)  # [2ⁿ, 1]
    inputs = ((codes >> torch.arange(n)) & 1).float()  # [2ⁿ, n]
    descending = inputs.sort(dim=1, descending=True).values  # [2ⁿ, n]
    for k in range(1, n + 1):
        kth = _kth_largest_by_network(inputs, k)  # [2ⁿ, 1]
        assert torch.equal(kth, descending[:, k - 1 : k])
    if n >= 4:
        operations = sum(
            keep_min + keep_max for _, _, keep_min, keep_max in selection_network(n, n // 2)
        )
        assert operations < 2 * len(merge_sort_network(n))


@pytest.mark.parametrize(("n", "k"), [(20, 10), (20, 1), (32, 7), (5, 5), (12, 3)])
@pytest.mark.parametrize("ties", ["exact", "threshold"])
def test_sorting_network_path_matches_the_argsort_oracle(n: int, k: int, ties: str) -> None:
    """Eager CPU batches of many short rows take the sorting-network path; same solutions."""
    torch.manual_seed(n * 100 + k)
    theta = torch.cat([tied_scores(4096, n, high=4), torch.randn(64, n)])  # [R, n]
    assert _network_pays(theta, k)
    expected = topk_argsort(theta, k, ties)
    assert torch.equal(TopK(k, ties)(theta), expected)
    grouped = theta.reshape(-1, 8, n)  # [B, 8, n]: top-k over the last dim of a 3-d batch
    assert torch.equal(TopK(k, ties)(grouped), expected.reshape(-1, 8, n))
    assert torch.equal(_kth_largest_by_network(theta, k), _kth_largest(theta, k))


@pytest.mark.parametrize("rows", [3, 4096])
def test_solutions_are_constants_even_when_theta_requires_grad(rows: int) -> None:
    """The solver's output carries no autograd history (so a missing estimator fails loudly
    instead of giving zero gradients), untied rows included."""
    theta = torch.randn(rows, 20, requires_grad=True)
    z = TopK(10)(theta)
    assert not z.requires_grad and z.grad_fn is None
    assert torch.equal(z, topk_argsort(theta.detach(), 10, "exact"))


@pytest.mark.parametrize(("n", "k", "few", "many"), [(10, 4, 256, 1000), (20, 10, 512, 2000)])
def test_the_network_is_chosen_for_many_rows_of_few_items(
    n: int, k: int, few: int, many: int
) -> None:
    """Dispatch by the cost model: ``torch.topk`` for a few rows, the network for many, and
    never for rows longer than ``NETWORK_MAX_ITEMS``."""
    assert not _network_pays(torch.zeros(few, n), k)
    assert _network_pays(torch.zeros(many, n), k)
    assert not _network_pays(torch.zeros(100_000, NETWORK_MAX_ITEMS + 1), k)


def test_k_may_be_any_integer_type() -> None:
    """k from a NumPy array or a 0-d tensor (a config, a data statistic) is an int."""
    theta = torch.randn(4, 9)
    for k in (np.int64(3), torch.tensor(3)):
        solver = TopK(k)
        assert type(solver.k) is int and torch.equal(solver(theta), TopK(3)(theta))
    for bad in (torch.tensor(3.0), torch.tensor([3]), 3.0):
        with pytest.raises(SolverInputError, match="k must be an int"):
            TopK(bad)


def test_minus_infinity_used_as_a_mask_gets_advice_on_masking() -> None:
    theta = torch.randn(3, 6)
    masked = theta.clone()
    masked[1, 2] = float("-inf")
    with pytest.raises(SolverInputError, match=r"instance\(s\) 1; the only such values are -inf"):
        TopK(2)(masked)
    masked[2, 0] = float("nan")
    with pytest.raises(SolverInputError, match=r"instance\(s\) 1, 2; check the network"):
        TopK(2)(masked)
    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[1, 2] = False
    assert TopK(2)(theta.masked_fill(~keep, -1e4))[1, 2] == 0  # the advice works


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_tie_among_thousands_of_half_precision_rows_is_resolved(dtype: torch.dtype) -> None:
    """A half-precision sum of the 0/1 mask is not exact beyond 2^11 (2^8 for bfloat16), so
    the count that detects ties must not be taken in θ's dtype: 2,201 ones would read as
    2,200 and the tied row would keep three."""
    rows, k = 1100, 2
    theta = torch.arange(4, dtype=dtype).repeat(rows, 1)  # [1100, 4], no ties at the k-th
    theta[0, 1] = theta[0, 2]  # one tie at row 0's k-th largest value
    z = TopK(k)(theta)
    assert torch.equal(z, topk_argsort(theta, k))
    assert z.sum(dim=-1).eq(k).all()
