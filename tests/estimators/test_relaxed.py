"""The relaxation estimator: Gumbel noise through a solver's continuous relaxation."""

from __future__ import annotations

import pytest
import torch

from aimle_zoo.estimators import (
    DifferentiableSolver,
    Gumbel,
    RelaxationError,
    Relaxed,
    build_estimator,
)
from aimle_zoo.solvers import MinimumSpanningTree, SpanningTreeEdges, TopK, get_solver
from aimle_zoo.solvers.topk import relaxed_topk


def test_without_noise_it_is_the_solvers_relaxation_and_its_exact_gradient() -> None:
    theta = torch.randn(4, 9, requires_grad=True)
    weights = torch.randn(4, 9)
    z = Relaxed(noise=None, temperature=0.3)(TopK(k=3), theta)
    (z * weights).sum().backward()
    reference = theta.detach().clone().requires_grad_(True)
    expected = relaxed_topk(reference, 3, 0.3)
    (expected * weights).sum().backward()
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(theta.grad, reference.grad)


def test_the_noise_is_gumbel_added_to_each_tiled_sample() -> None:
    theta = torch.randn(3, 6, requires_grad=True)
    estimator = Relaxed(temperature=0.5, samples=4, generator=torch.Generator().manual_seed(1))
    z = estimator(TopK(k=2), theta)
    assert z.shape == (12, 6)
    noise = Gumbel().sample((12, 6), generator=torch.Generator().manual_seed(1))
    expected = relaxed_topk(theta.detach().repeat_interleave(4, dim=0) + noise, 2, 0.5)
    torch.testing.assert_close(z.detach(), expected)


@pytest.mark.parametrize("hard", [False, True])
def test_the_gradient_is_the_mean_over_samples_like_every_estimators(hard: bool) -> None:
    """N noise-free samples are N copies of one: their mean gradient is the single sample's,
    as STE's (the straight-through mean of dy) is, not N times it."""
    theta = torch.randn(3, 7, dtype=torch.float64)
    weights = torch.randn(3, 7, dtype=torch.float64)
    gradients = {}
    for samples in (1, 5):
        for name, estimator in (
            ("relaxed", Relaxed(noise=None, temperature=0.4, samples=samples, hard=hard)),
            ("ste", build_estimator({"name": "ste", "samples": samples})),
        ):
            leaf = theta.clone().requires_grad_(True)
            z = estimator(TopK(k=2), leaf)
            (z * weights.repeat_interleave(samples, dim=0)).sum().backward()
            gradients[name, samples] = leaf.grad
    torch.testing.assert_close(gradients["relaxed", 5], gradients["relaxed", 1])
    torch.testing.assert_close(gradients["ste", 5], gradients["ste", 1])


def test_hard_forwards_the_discrete_solution_and_backpropagates_the_relaxation() -> None:
    theta = torch.randn(5, 20, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, 20, dtype=torch.float64)
    solver = SpanningTreeEdges()
    hard = Relaxed(temperature=0.4, hard=True, generator=torch.Generator().manual_seed(7))
    soft = Relaxed(temperature=0.4, generator=torch.Generator().manual_seed(7))
    z_hard = hard(solver, theta)
    (gradient_hard,) = torch.autograd.grad((z_hard * weights).sum(), theta)
    z_soft = soft(solver, theta)
    (gradient_soft,) = torch.autograd.grad((z_soft * weights).sum(), theta)
    generator = torch.Generator().manual_seed(7)
    noise = Gumbel().sample((5, 20), dtype=torch.float64, generator=generator)
    torch.testing.assert_close(z_hard.detach(), solver(theta.detach() + noise))
    torch.testing.assert_close(gradient_hard, gradient_soft)
    assert not torch.equal(z_hard.detach(), z_soft.detach())


def test_a_minimising_solver_gets_the_noise_subtracted() -> None:
    raw = torch.randn(2, 5, 5, dtype=torch.float64)
    theta = (raw + raw.transpose(1, 2)) / 2
    z = Relaxed(temperature=0.6, generator=torch.Generator().manual_seed(3))(
        MinimumSpanningTree(), theta
    )
    generator = torch.Generator().manual_seed(3)
    noise = Gumbel().sample((2, 5, 5), dtype=torch.float64, generator=generator)
    torch.testing.assert_close(z, MinimumSpanningTree().relax(theta - noise, 0.6))


def test_a_given_relaxation_overrides_the_solvers_and_serves_plain_functions() -> None:
    def argmax(theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(theta.argmax(-1), theta.shape[-1]).to(theta)

    def gumbel_softmax(theta: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.softmax(theta / temperature, dim=-1)

    estimator = Relaxed(noise=None, temperature=0.2, relaxation=gumbel_softmax)
    theta = torch.randn(3, 5)
    torch.testing.assert_close(estimator(argmax, theta), torch.softmax(theta / 0.2, dim=-1))
    layer = DifferentiableSolver(argmax, Relaxed(relaxation=gumbel_softmax, hard=True))
    z = layer(theta)
    torch.testing.assert_close(z, z.round())  # one-hot up to the straight-through rounding
    torch.testing.assert_close(z.sum(dim=-1), torch.ones(3))


def test_a_solver_without_a_relaxation_is_refused_when_the_layer_is_built() -> None:
    with pytest.raises(RelaxationError, match="solver 'dijkstra' has no continuous relaxation"):
        DifferentiableSolver("dijkstra", "relaxed")
    with pytest.raises(RelaxationError, match=r"pass Relaxed\(relaxation=\.\.\.\)"):
        Relaxed()(lambda theta: theta.round(), torch.randn(2, 3))


def test_a_relaxation_of_the_wrong_shape_is_a_clear_error() -> None:
    estimator = Relaxed(relaxation=lambda theta, temperature: theta.sum(-1))
    with pytest.raises(RelaxationError, match=r"returned \(2,\) for input shape \(2, 3\)"):
        estimator(get_solver("topk", k=1), torch.randn(2, 3))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_the_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        Relaxed(temperature=temperature)


def test_config_round_trip_and_eval_mode_uses_the_plain_solver() -> None:
    estimator = Relaxed(temperature=0.25, samples=3, hard=True)
    rebuilt = build_estimator(estimator.config())
    assert isinstance(rebuilt, Relaxed) and rebuilt.config() == estimator.config()
    layer = DifferentiableSolver("topk", rebuilt, k=2).eval()
    theta = torch.randn(4, 6)
    assert torch.equal(layer(theta), TopK(k=2)(theta))


def test_the_decorator_wraps_a_plain_function_with_its_relaxation() -> None:
    from aimle_zoo import relaxed

    def softmax(theta: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.softmax(theta / temperature, dim=-1)

    @relaxed(relaxation=softmax, noise=None, temperature=0.25, samples=2)
    def argmax(theta: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(theta.argmax(-1), theta.shape[-1]).to(theta)

    theta = torch.randn(3, 4)
    expected = torch.softmax(theta / 0.25, dim=-1).repeat_interleave(2, dim=0)
    torch.testing.assert_close(argmax(theta), expected)
    assert argmax.__name__ == "argmax" and argmax.estimator.config()["samples"] == 2


@pytest.mark.parametrize("name", ["mst", "mst_edges"])
def test_spanning_tree_marginals_under_inference_mode_and_torch_compile(name: str) -> None:
    """The marginals take their own autograd pass: inference mode used to refuse it, and a
    compiled caller cut θ off log Z's graph ("appears to not have been used in the graph")."""
    layer = DifferentiableSolver(name, Relaxed(noise=None))
    theta = torch.randn(2, 20) if name == "mst_edges" else torch.randn(2, 5, 5)
    expected = layer(theta)
    with torch.inference_mode():
        torch.testing.assert_close(layer(theta), expected)
    weights = torch.arange(expected.numel(), dtype=theta.dtype).view_as(expected)
    eager_theta, compiled_theta = theta.clone().requires_grad_(), theta.clone().requires_grad_()
    (layer(eager_theta) * weights).sum().backward()
    compiled = torch.compile(layer, backend="aot_eager")
    (compiled(compiled_theta) * weights).sum().backward()
    assert eager_theta.grad is not None and compiled_theta.grad is not None
    torch.testing.assert_close(compiled_theta.grad, eager_theta.grad)


def test_second_derivatives_are_exact_with_one_sample_and_refused_with_more() -> None:
    """With N > 1 samples the gradient is the mean over them, a convention no scaling node can
    differentiate exactly (a hook on θ divided every second-order term by N again, one on z̃
    the loss-curvature term): create_graph=True is refused. With one sample the
    Hessian-vector product of a non-linear loss matches finite differences."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    direction = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    several = DifferentiableSolver("topk", Relaxed(noise=None, samples=3), k=2)
    weights = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"samples=3.*\(create_graph=True\)"):
        torch.autograd.grad(((several(theta) - weights) ** 2).sum(), theta, create_graph=True)
    (first,) = torch.autograd.grad(((several(theta) - weights) ** 2).sum(), theta)  # first order
    assert torch.isfinite(first).all()

    layer = DifferentiableSolver("topk", Relaxed(noise=None, temperature=1.0), k=2)
    target = weights[:2]

    def gradient(at: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        loss = ((layer(at) - target) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, at, create_graph=create_graph)
        return grad

    (hvp,) = torch.autograd.grad((gradient(theta, True) * direction).sum(), theta)
    step = 1e-6
    with torch.no_grad():
        ahead, behind = theta + step * direction, theta - step * direction
    numeric = (gradient(ahead.requires_grad_()) - gradient(behind.requires_grad_())) / (2 * step)
    torch.testing.assert_close(hvp, numeric, rtol=1e-5, atol=1e-7)
