"""``torch.compile``: the layers and the zoo models train under it as they do eagerly.

TorchDynamo breaks the graph where a solver loops on its data and runs the estimators' custom
autograd functions as they are; what it must not do is trace into the noise samplers' NumPy
table construction (it did, and failed on the Sum-of-Gamma tables), or lose an update of the
adaptive target's state. Each test trains under ``torch.compile`` and eagerly from the same
seeds and compares every parameter and buffer.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import Tensor

from aimle_zoo import DifferentiableSolver, FenchelYoungLoss
from aimle_zoo.estimators import noise
from aimle_zoo.estimators.registry import build_estimator, list_estimators
from aimle_zoo.models import ZooModel

from .models._helpers import TINY, make_batch, tiny_model

# importing TorchDynamo's backends defines a scripted helper with the deprecated decorator
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


def _train(name: str, backend: str | None, steps: int = 3) -> dict[str, Tensor]:
    """The state of tiny model ``name`` after ``steps`` Adam steps of its training loss."""
    torch.manual_seed(0)
    model: ZooModel = tiny_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_of = (
        model.training_loss
        if backend is None
        else torch.compile(model.training_loss, backend=backend)
    )
    torch.manual_seed(1)
    for step in range(steps):
        loss, _ = loss_of(make_batch(name, model, 6, seed=step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _assert_same_state(eager: dict[str, Tensor], compiled: dict[str, Tensor], atol: float) -> None:
    assert eager.keys() == compiled.keys()
    for key, value in eager.items():
        if value.is_floating_point():
            torch.testing.assert_close(compiled[key], value, rtol=0, atol=atol, msg=key)
        else:
            assert torch.equal(compiled[key], value), key


@pytest.fixture(autouse=True)
def _fresh_dynamo_and_noise_tables() -> None:
    """A fresh TorchDynamo, and the Sum-of-Gamma tables forgotten, so that the compiled run
    (which goes first) builds them, as in a fresh process."""
    torch._dynamo.reset()
    noise._clear_table_caches()


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_model_trains_under_compile_as_eagerly(name: str) -> None:
    """aot_eager runs the captured graphs with eager kernels: the same numbers, bit for bit,
    including the adaptive target's β, its gradient-norm average and its last update."""
    compiled = _train(name, "aot_eager")
    eager = _train(name, None)
    _assert_same_state(eager, compiled, atol=0.0)
    assert any("target.beta" in key for key in eager)  # the adaptive state is compared


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor compiles C++ on the CPU")
def test_inductor_trains_the_vae_as_eagerly() -> None:
    """Inductor generates its own kernels (and, unless told otherwise, its own random stream):
    with PyTorch's random stream the state agrees up to kernel rounding."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        compiled = _train("discrete_vae", "inductor")
    _assert_same_state(_train("discrete_vae", None), compiled, atol=1e-5)


@pytest.mark.parametrize("estimator", list_estimators())
def test_every_estimator_gives_the_same_gradient_under_compile(estimator: str) -> None:
    gradients = []
    for backend in ("aot_eager", None):
        torch.manual_seed(0)
        layer = DifferentiableSolver("topk", build_estimator(estimator), k=3)
        theta = torch.randn(6, 10, requires_grad=True)
        forward = layer if backend is None else torch.compile(layer, backend=backend)
        torch.manual_seed(1)
        z = forward(theta)
        ((z - torch.rand_like(z)) ** 2).sum().backward()
        assert theta.grad is not None
        gradients.append(theta.grad)
    assert gradients[1].abs().sum() > 0
    torch.testing.assert_close(gradients[0], gradients[1], rtol=0, atol=0)


def test_the_fenchel_young_loss_gives_the_same_gradient_under_compile() -> None:
    gradients = []
    for backend in ("aot_eager", None):
        torch.manual_seed(0)
        loss_fn = FenchelYoungLoss("dijkstra", samples=3)
        costs = (torch.rand(4, 6, 6) * 5).requires_grad_()
        gold = loss_fn.solver(torch.rand(4, 6, 6))
        forward = loss_fn if backend is None else torch.compile(loss_fn, backend=backend)
        torch.manual_seed(1)
        forward(costs, gold).backward()
        assert costs.grad is not None
        gradients.append(costs.grad)
    assert gradients[1].abs().sum() > 0
    torch.testing.assert_close(gradients[0], gradients[1], rtol=0, atol=0)
