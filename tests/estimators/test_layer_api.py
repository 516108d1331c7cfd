"""DifferentiableSolver, decorators, the estimator registry, sample layout helpers and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from aimle_zoo.estimators import (
    AIMLE,
    IMLE,
    STE,
    Blackbox,
    DifferentiableFunction,
    DifferentiableSolver,
    FixedTarget,
    PerturbedOptimizer,
    SolverOutputError,
    SumOfGamma,
    UnknownEstimatorError,
    aimle,
    blackbox,
    build_estimator,
    expand_samples,
    imle,
    list_estimators,
    mean_over_samples,
    perturbed,
    relaxed,
    ste,
)
from aimle_zoo.solvers import SolverInputError, TopK, get_solver, get_solver_spec

from ._helpers import topk_mask


class ScriptableTopK(nn.Module):
    """A TorchScript-compatible top-k solver module."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, theta: Tensor) -> Tensor:
        return torch.zeros_like(theta).scatter(-1, theta.topk(self.k, dim=-1).indices, 1.0)


# ------------------------------------------------------------------ DifferentiableSolver


def test_layer_train_uses_estimator_and_eval_the_plain_solver() -> None:
    solver = ScriptableTopK(3)
    layer = DifferentiableSolver(solver, AIMLE(samples=4))
    assert dict(layer.named_children())["solver"] is solver
    theta = torch.randn(5, 9, requires_grad=True)
    z = layer(theta)
    assert layer.samples == 4 and z.shape == (20, 9)
    assert z.requires_grad and not torch.equal(z, expand_samples(solver(theta), 4))
    (z * torch.randn_like(z)).sum().backward()
    assert theta.grad is not None and theta.grad.shape == (5, 9)

    layer.eval()
    assert layer.samples == 1
    assert torch.equal(layer(theta), solver(theta))


def test_eval_mode_checks_and_casts_the_solution_as_training_does() -> None:
    def boolean_top2(theta: Tensor) -> Tensor:  # the right solution, as booleans
        return theta >= theta.topk(2, dim=-1).values[..., -1:]

    layer = DifferentiableSolver(boolean_top2, AIMLE())
    theta = torch.randn(3, 5, dtype=torch.float64)
    for mode in (True, False):
        z = layer.train(mode)(theta)
        assert z.dtype == torch.float64 and z.sum(-1).tolist() == [2.0] * 3
    with pytest.raises(SolverOutputError, match=r"returned shape \(3,\) for input shape"):
        DifferentiableSolver(lambda t: t.sum(-1), AIMLE()).eval()(theta)


def test_layer_builds_named_solver_and_estimator() -> None:
    layer = DifferentiableSolver("topk", "imle", k=3)
    assert isinstance(layer.estimator, IMLE)
    assert isinstance(DifferentiableSolver("topk", k=3).estimator, AIMLE)
    theta = torch.randn(4, 8)
    reference = get_solver("topk", k=3)
    assert torch.equal(layer.eval()(theta), reference(theta))
    assert torch.equal(reference(theta), topk_mask(theta, 3))


def test_registered_minimiser_sense_is_read_from_the_registry() -> None:
    spec = get_solver_spec("grid_shortest_path")
    assert spec.sense == "min" and spec.example is not None
    params, theta = spec.example(2, torch.Generator().manual_seed(0))
    solver = get_solver("grid_shortest_path", **params)
    cost = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1))

    def gradient(**kwargs) -> Tensor:
        t = theta.clone().requires_grad_()
        (Blackbox(lambda_=5.0)(solver, t, **kwargs) * cost).sum().backward()
        return t.grad

    declared, as_min, as_max = gradient(), gradient(minimize=True), gradient(minimize=False)
    assert torch.equal(declared, as_min)
    assert declared.abs().sum() > 0 and not torch.equal(declared, as_max)


def test_the_layer_takes_the_sense_of_a_wrapped_solver_from_minimize() -> None:
    """A wrapper such as nn.Sequential has no sense of its own: ``minimize=True`` gives the
    minimiser's gradient, as the bare registered solver does by itself."""
    spec = get_solver_spec("grid_shortest_path")
    params, theta = spec.example(2, torch.Generator().manual_seed(0))
    solver = get_solver("grid_shortest_path", **params)
    wrapped = nn.Sequential(nn.Identity(), solver)
    cost = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1))

    def gradient(layer: DifferentiableSolver) -> Tensor:
        t = theta.clone().requires_grad_()
        (layer(t) * cost).sum().backward()
        return t.grad

    bare = gradient(DifferentiableSolver(solver, Blackbox(lambda_=5.0)))
    told = gradient(DifferentiableSolver(wrapped, Blackbox(lambda_=5.0), minimize=True))
    untold = gradient(DifferentiableSolver(wrapped, Blackbox(lambda_=5.0)))
    assert bare.abs().sum() > 0
    assert torch.equal(told, bare) and not torch.equal(untold, bare)
    with pytest.raises(TypeError, match="minimize must be True, False or None"):
        DifferentiableSolver(solver, minimize="yes")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_eval_layer_gives_the_eval_output() -> None:
    layer = DifferentiableSolver(ScriptableTopK(2), AIMLE(samples=3)).eval()
    theta = torch.randn(6, 7)
    scripted = torch.jit.script(layer)
    assert torch.equal(scripted(theta), layer(theta))
    assert torch.equal(scripted(theta), topk_mask(theta, 2))


def test_torch_export_of_a_training_layer_holds_the_plain_solver() -> None:
    """``torch.export`` cannot hold the estimator's autograd Function; the layer exports MAP."""
    layer = DifferentiableSolver(ScriptableTopK(3), AIMLE(samples=4)).train()
    theta = torch.randn(5, 8)
    exported = torch.export.export(layer, (theta,)).module()
    other = torch.randn(5, 8)
    assert torch.equal(exported(other), topk_mask(other, 3))
    assert layer.training and layer(other).shape == (20, 8)


def test_layer_state_dict_holds_the_adaptive_state() -> None:
    layer = DifferentiableSolver(ScriptableTopK(2))
    assert set(layer.state_dict()) == {
        "estimator.target.beta",
        "estimator.target.grad_norm",
        "estimator.target.last_update",
    }


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: DifferentiableSolver(ScriptableTopK(2), k=3), TypeError, "only used with a"),
        (lambda: DifferentiableSolver(3), TypeError, "solver must be"),
        (lambda: DifferentiableSolver(ScriptableTopK(2), 3), TypeError, "estimator must be"),
        (lambda: DifferentiableSolver(ScriptableTopK(2), "aimel"), UnknownEstimatorError, "aimle"),
    ],
)
def test_layer_errors(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- decorators


@pytest.mark.parametrize(
    ("decorator", "kwargs", "cls", "samples"),
    [
        (
            aimle,
            {
                "target": "fixed",
                "noise": "gaussian",
                "samples": 2,
                "marginal_samples": 2,
                "input_temperature": 0.5,
                "target_temperature": 0.25,
                "symmetric": True,
            },
            AIMLE,
            4,
        ),
        (
            imle,
            {
                "lambda_": 3.0,
                "scale_gradient": False,
                "noise": "gaussian",
                "samples": 3,
                "marginal_samples": 2,
                "input_temperature": 0.5,
                "target_temperature": 0.25,
            },
            IMLE,
            6,
        ),
        (ste, {"samples": 2, "noise": "gumbel", "temperature": 0.5}, STE, 2),
        (
            perturbed,
            {"noise": "gumbel", "sigma": 0.5, "samples": 5, "baseline": False},
            PerturbedOptimizer,
            5,
        ),
        (blackbox, {"lambda_": 2.0}, Blackbox, 1),
    ],
)
def test_decorators_both_forms(decorator, kwargs, cls, samples) -> None:
    @decorator(**kwargs)
    def top2(theta: Tensor) -> Tensor:
        """Top-2 indicator."""
        return topk_mask(theta, 2)

    wrapped = decorator(lambda t: topk_mask(t, 2), **kwargs)
    for function in (top2, wrapped):
        assert isinstance(function, DifferentiableFunction)
        assert isinstance(function.estimator, cls) and function.estimator.samples == samples
        config = function.estimator.config()
        for key, value in kwargs.items():
            assert config[key] == value or config[key]["name"] == value
    assert top2.__name__ == "top2" and top2.__doc__ == "Top-2 indicator."
    theta = torch.randn(3, 6, requires_grad=True)
    z = top2(theta)
    assert z.shape == (3 * samples, 6)
    (z * torch.randn_like(z)).sum().backward()
    assert theta.grad is not None and theta.grad.shape == (3, 6)


@pytest.mark.parametrize("decorator", [aimle, imle, ste, perturbed, relaxed])
def test_decorators_take_the_estimators_generator_and_minimizer_noise(decorator) -> None:
    """Two functions decorated with equally seeded generators draw the same noise."""
    options = {} if decorator in (perturbed, relaxed) else {"minimizer_noise": "add"}
    theta = torch.randn(3, 6)
    outputs = []
    for _ in range(2):
        function = decorator(
            TopK(2), samples=4, generator=torch.Generator().manual_seed(7), **options
        )
        outputs.append(function(theta.clone().requires_grad_()))
        if options:
            assert function.estimator.minimizer_noise == "add"
    assert torch.equal(outputs[0], outputs[1])


def test_decorator_minimize_override() -> None:
    theta = torch.randn(4, 7, dtype=torch.float64)
    cost = torch.randn(4, 7, dtype=torch.float64)
    bottom = blackbox(lambda t: topk_mask(-t, 3), lambda_=2.0, minimize=True)
    top = blackbox(lambda t: topk_mask(t, 3), lambda_=2.0)
    grads = []
    for function, t in ((bottom, theta), (top, -theta)):
        t = t.clone().requires_grad_()
        (function(t) * cost).sum().backward()
        grads.append(t.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], -grads[1])


# ------------------------------------------------------------------------------ registry


CONFIGS = [
    {
        "name": "aimle",
        "target": {"name": "adaptive", "initial_beta": 0.5, "target_norm": 3.0},
        "noise": {"name": "sog", "k": 3.0, "iterations": 5},
        "samples": 2,
        "marginal_samples": 2,
        "input_temperature": 0.5,
        "target_temperature": 0.25,
        "symmetric": True,
    },
    {"name": "aimle", "target": {"name": "fixed", "lambda_": 2.0}, "noise": None},
    {"name": "imle", "lambda_": 4.0, "scale_gradient": False, "noise": "gaussian", "samples": 3},
    {"name": "imle", "lambda_": 1.5, "noise": "gumbel", "samples": 2, "marginal_samples": 3},
    {"name": "ste", "noise": "gumbel", "temperature": 0.5, "samples": 2},
    {"name": "perturbed", "noise": "gumbel", "sigma": 0.3, "samples": 4, "baseline": False},
    {"name": "blackbox", "lambda_": 7.0},
]


@pytest.mark.parametrize("config", CONFIGS, ids=[c["name"] for c in CONFIGS])
def test_build_estimator_config_round_trip(config) -> None:
    estimator = build_estimator(config)
    saved = json.loads(json.dumps(estimator.config()))
    rebuilt = build_estimator(saved)
    assert type(rebuilt) is type(estimator)
    assert rebuilt.config() == estimator.config() == saved
    theta = torch.randn(3, 8)
    outputs = []
    for module in (estimator, rebuilt):
        torch.manual_seed(5)
        t = theta.clone().requires_grad_()
        z = module(lambda x: topk_mask(x, 3), t)
        (z * torch.arange(z.numel()).reshape(z.shape)).sum().backward()
        outputs.append((z, t.grad))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1], outputs[1][1])


def test_build_estimator_by_name_with_overrides() -> None:
    assert list_estimators() == [
        "aimle", "imle", "ste", "perturbed", "blackbox", "relaxed", "simple",
    ]  # fmt: skip
    assert isinstance(build_estimator("AIMLE"), AIMLE)  # names ignore case
    estimator = build_estimator("aimle", samples=3, target=FixedTarget(1.5))
    assert isinstance(estimator, AIMLE) and estimator.samples == 3
    overridden = build_estimator(estimator.config(), symmetric=True)
    assert overridden.symmetric and overridden.config()["target"] == {
        "name": "fixed",
        "lambda_": 1.5,
        "scale_gradient": True,
    }


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: build_estimator("aimel"), UnknownEstimatorError, "Did you mean 'aimle'"),
        (lambda: build_estimator("sfe"), UnknownEstimatorError, "Known estimators: aimle, imle"),
        (lambda: build_estimator({"samples": 2}), ValueError, "needs a 'name' key"),
        (lambda: build_estimator("imle", symmetric=True), TypeError, "IMLE\\(lambda_"),
        (lambda: build_estimator(3), TypeError, "name or a config dict"),
        (lambda: AIMLE(noise="gumbell"), ValueError, "Did you mean 'gumbel'"),
        (lambda: IMLE(noise="sog"), ValueError, "needs k"),
        (lambda: AIMLE(samples=0), ValueError, "samples must be an integer >= 1"),
        (lambda: AIMLE(samples=1.5), ValueError, "samples must be an integer >= 1"),
        (lambda: AIMLE(marginal_samples=0), ValueError, "marginal_samples must be"),
        (lambda: STE(samples=-1), ValueError, "samples must be an integer >= 1"),
        (lambda: AIMLE(input_temperature=-0.1), ValueError, "input_temperature must be"),
        (lambda: IMLE(target_temperature=-1), ValueError, "target_temperature must be"),
        (lambda: STE(temperature=-1), ValueError, "temperature must be"),
        (lambda: IMLE(lambda_=0.0), ValueError, "lambda_ must be a finite number > 0"),
        (lambda: Blackbox(lambda_=-2.0), ValueError, "lambda_ must be a finite number > 0"),
        (lambda: PerturbedOptimizer(sigma=0.0), ValueError, "sigma must be a finite number > 0"),
        (lambda: IMLE(lambda_=math.inf), ValueError, "lambda_ must be a finite number > 0"),
        (lambda: AIMLE(symmetric="no"), TypeError, "symmetric must be True or False"),
        (lambda: AIMLE(symmetric=1), TypeError, "symmetric must be True or False"),
        (lambda: IMLE(scale_gradient=0), TypeError, "scale_gradient must be True or False"),
        (lambda: build_estimator({"name": "relaxed", "hard": "yes"}), TypeError, "hard must be"),
        (lambda: AIMLE(input_temperature=math.inf), ValueError, "finite number >= 0"),
        (lambda: STE(temperature=math.nan), ValueError, "finite number >= 0"),
        (lambda: AIMLE(target={"name": "adaptive", "update_step": math.inf}), ValueError, "finite"),
        (lambda: AIMLE(target={"name": "fixed", "lambda_": math.inf}), ValueError, "finite"),
        (lambda: PerturbedOptimizer(noise=SumOfGamma(3)), ValueError, "density gradient"),
        (lambda: PerturbedOptimizer(noise=None), ValueError, "density gradient"),
        (lambda: PerturbedOptimizer(samples=1), ValueError, "baseline=True needs samples >= 2"),
    ],
)
def test_construction_errors(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def _wrong_shape(theta: Tensor) -> Tensor:
    return theta[:, :-1]


def _not_a_tensor(theta: Tensor) -> list[int]:
    return [1]


@pytest.mark.parametrize(
    ("solver", "theta", "error", "match"),
    [
        (_wrong_shape, torch.randn(2, 5), SolverOutputError, "solver _wrong_shape returned shape"),
        (_not_a_tensor, torch.randn(2, 5), SolverOutputError, "_not_a_tensor returned list"),
        (lambda t: t, torch.ones(2, 5, dtype=torch.int64), SolverInputError, "floating-point"),
        (lambda t: t, torch.tensor(1.0), SolverInputError, "batch dimension"),
        (3, torch.randn(2, 5), TypeError, "solver must be callable"),
    ],
)
@pytest.mark.parametrize("make", [AIMLE, IMLE, STE, PerturbedOptimizer, Blackbox])
def test_call_errors(make, solver, theta, error, match) -> None:
    with pytest.raises(error, match=match):
        make()(solver, theta)


# ---------------------------------------------------------------------------- layout


def test_sample_layout_helpers() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    tiled = expand_samples(x, 2)
    assert tiled.tolist() == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
    assert expand_samples(x, 1) is x
    values = torch.arange(12.0).reshape(6, 2)  # rows b·3 + n
    assert mean_over_samples(values, 3).tolist() == [[2.0, 3.0], [8.0, 9.0]]
    with pytest.raises(ValueError, match="not a multiple of samples=4"):
        mean_over_samples(values, 4)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        expand_samples(x, 0)


@pytest.mark.parametrize("name", ["aimle", "imle", "blackbox"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_incoming_gradient_is_named_as_such(name: str, bad: float) -> None:
    """θ is finite: the error must blame ∂L/∂z, not the network producing θ."""
    theta = torch.randn(3, 6, requires_grad=True)
    z = build_estimator(name)(get_solver("topk", k=2), theta)
    dy = torch.ones_like(z)
    dy[1, 4] = bad
    with pytest.raises(ValueError, match=r"incoming gradient ∂L/∂z contains NaN or inf"):
        z.backward(dy)


def test_switches_take_numpy_booleans() -> None:
    assert AIMLE(symmetric=np.bool_(True)).symmetric is True


def test_nan_in_theta_is_refused_for_any_solver_and_inf_masks_pass() -> None:
    """Built-in solvers screen θ themselves, a user's callable does not: the estimator refuses
    NaN (which gave an all-zero gradient and a drifting β), naming the instances, and lets
    ±inf through (a -inf mask before an argmax is common)."""

    def argmax(theta: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(theta.argmax(-1), theta.shape[-1]).to(theta)

    theta = torch.randn(4, 6)
    theta[2, 1] = math.nan
    for name in ("aimle", "imle", "ste", "perturbed", "blackbox"):
        with pytest.raises(SolverInputError, match=r"theta contains NaN values in instance\(s\) 2"):
            build_estimator(name)(argmax, theta)
    masked = torch.randn(4, 6).masked_fill(torch.arange(6) == 5, -math.inf).requires_grad_()
    z = AIMLE(samples=4, symmetric=True)(argmax, masked)
    ((z - torch.eye(6)[0]) ** 2).sum().backward()
    assert masked.grad is not None and torch.isfinite(masked.grad).all()
    assert masked.grad[:, :5].any() and not masked.grad[:, 5].any()


def test_the_perturbed_optimizer_takes_an_empty_batch() -> None:
    theta = torch.randn(0, 6, requires_grad=True)
    PerturbedOptimizer(samples=3)(get_solver("topk", k=2), theta).sum().backward()
    assert theta.grad is not None and theta.grad.shape == (0, 6)


def test_nan_in_a_one_dimensional_theta_is_named() -> None:
    """θ of shape [B] (no trailing dims) is valid; its NaN screen used to fail on flatten(1)."""
    theta = torch.tensor([1.0, math.nan, 3.0])
    with pytest.raises(SolverInputError, match=r"NaN values in instance\(s\) 1"):
        STE()(lambda t: (t > 0).to(t.dtype), theta)
