"""Fixed and adaptive targets: λ, the β update rule, state round trips and rank sync."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import aimle_zoo.estimators.targets as targets_module
from aimle_zoo.estimators import (
    AIMLE,
    IMLE,
    AdaptiveTarget,
    Blackbox,
    DifferentiableSolver,
    FixedTarget,
    build_estimator,
    make_target,
)
from aimle_zoo.solvers import get_solver

from ._helpers import topk_mask


def _gradient_with_nonzeros(count: int, shape=(2, 3, 10), seed: int = 0) -> torch.Tensor:
    """A ``[B, S, n]`` difference with exactly ``count`` non-zero entries (±1)."""
    gen = torch.Generator().manual_seed(seed)
    flat = torch.zeros(int(np.prod(shape)))
    positions = torch.randperm(flat.numel(), generator=gen)[:count]
    flat[positions] = torch.where(torch.rand(count, generator=gen) < 0.5, -1.0, 1.0)
    return flat.reshape(shape)


def test_adaptive_update_follows_the_rule_step_by_step() -> None:
    beta, running, previous = 0.3, 1.0, 0.0
    c, eta, mu, rho = 2.0, 0.05, 0.5, 0.8
    target = AdaptiveTarget(
        initial_beta=beta, target_norm=c, update_step=eta, momentum=mu, decay=rho
    )
    # counts per step (60 entries, B·S = 6): rises, then a long run of dense gradients that
    # drives β to the clamp at 0 with momentum, then sparse ones again.
    counts = [0, 12, 3, 30, 40, 40, 40, 40, 40, 0, 0, 6]
    for step_index, count in enumerate(counts):
        gradient = _gradient_with_nonzeros(count, seed=step_index)
        step = torch.tensor(0.25)
        out = target.process(gradient, step)
        running = rho * running + (1 - rho) * count / 6
        update = (eta if running < c else -eta) + mu * previous
        beta, previous = max(beta + update, 0.0), update
        assert torch.equal(out, gradient / 0.25)
        assert float(target.grad_norm) == pytest.approx(running, rel=1e-5)
        assert float(target.last_update) == pytest.approx(previous, rel=1e-5, abs=1e-7)
        assert float(target.beta) == pytest.approx(beta, rel=1e-5, abs=1e-7)
    assert min(float(target.beta), beta) >= 0.0


def test_a_running_count_equal_to_the_target_steps_beta_down() -> None:
    """Δ = +η only while c̄ < c: at c̄ = c exactly β steps down. ρ = 1 (in range: the running
    count never moves) holds c̄ at its start, c̄₀ = c, whatever the batches' counts."""
    target = AdaptiveTarget(
        initial_beta=0.5, target_norm=2.0, update_step=0.1, decay=1.0, initial_grad_norm=2.0
    )
    for count in (0, 5, 10):  # ĉ = 0, 5/6, 10/6: all below c
        target.process(_gradient_with_nonzeros(count), torch.tensor(1.0))
        assert float(target.grad_norm) == 2.0
        assert float(target.last_update) == pytest.approx(-0.1)
    assert float(target.beta) == pytest.approx(0.2)


def test_adaptive_step_size_is_beta_times_norm_ratio() -> None:
    target = AdaptiveTarget(initial_beta=0.7)
    theta = torch.randn(6, 5, dtype=torch.float64)
    dy = torch.randn(6, 5, dtype=torch.float64)
    step = target.step_size(theta, dy)
    expected = 0.7 * np.linalg.norm(theta.numpy()) / np.linalg.norm(dy.numpy())
    assert step.dtype == torch.float64 and step.dim() == 0
    assert float(step) == pytest.approx(expected, rel=1e-6)

    zero = target.step_size(theta, torch.zeros_like(dy))
    assert float(zero) == 0.0
    gradient = _gradient_with_nonzeros(4).double()
    assert torch.equal(target.process(gradient, zero), gradient)


def test_fixed_target_step_and_scaling() -> None:
    theta, dy = torch.randn(4, 3), torch.randn(4, 3)
    gradient = _gradient_with_nonzeros(5, shape=(2, 2, 3))
    scaled, unscaled = FixedTarget(4.0), FixedTarget(4.0, scale_gradient=False)
    assert float(scaled.step_size(theta, dy)) == 4.0
    assert torch.equal(scaled.process(gradient, torch.tensor(4.0)), gradient / 4)
    assert torch.equal(unscaled.process(gradient, torch.tensor(4.0)), gradient)


@pytest.mark.parametrize(("beta0", "grows"), [(1e-4, True), (50.0, False)])
def test_beta_moves_towards_the_target_norm(beta0: float, grows: bool) -> None:
    """Too small a λ gives no non-zeros (β grows); too large gives ~2k per sample (β shrinks)."""
    target = AdaptiveTarget(initial_beta=beta0, target_norm=2.0, update_step=1e-3)
    estimator = AIMLE(target=target, samples=2, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        theta = torch.randn(8, 10, generator=gen, requires_grad=True)
        z = estimator(lambda t: topk_mask(t, 3), theta)
        (z * torch.randn(z.shape, generator=gen)).sum().backward()
    moved = float(target.beta) - beta0
    if grows:
        assert moved == pytest.approx(30 * 1e-3, rel=1e-3)  # every step went up
        assert float(target.grad_norm) < 2.0
    else:
        assert moved < -20 * 1e-3
        assert float(target.grad_norm) > 2.0


def test_adaptive_state_survives_a_state_dict_round_trip() -> None:
    config = {
        "name": "aimle",
        "target": {"name": "adaptive", "initial_beta": 0.2, "update_step": 0.01, "momentum": 0.3},
        "noise": None,
        "samples": 2,
    }
    estimator = build_estimator(config)
    gen = torch.Generator().manual_seed(0)

    def step(module, theta, cost):
        theta = theta.clone().requires_grad_()
        z = module(lambda t: topk_mask(t, 2), theta)
        (z * cost).sum().backward()
        return theta.grad

    batches = [
        (torch.randn(5, 7, generator=gen), torch.randn(10, 7, generator=gen)) for _ in range(7)
    ]
    for theta, cost in batches[:6]:
        step(estimator, theta, cost)
    buffer = io.BytesIO()
    torch.save(estimator.state_dict(), buffer)
    buffer.seek(0)
    restored = build_estimator(estimator.config())
    restored.load_state_dict(torch.load(buffer))
    untouched = build_estimator(estimator.config())
    assert set(estimator.state_dict()) == {
        "target.beta",
        "target.grad_norm",
        "target.last_update",
    }
    assert float(restored.beta) == float(estimator.beta) != 0.2

    theta, cost = batches[6]
    grads = [step(module, theta, cost) for module in (estimator, restored, untouched)]
    assert torch.equal(grads[0], grads[1])
    for name, value in estimator.state_dict().items():
        assert torch.equal(value, restored.state_dict()[name]), name
    assert not torch.equal(estimator.beta, untouched.beta)


@pytest.mark.parametrize("sync", [True, False])
def test_counts_are_summed_over_ranks(monkeypatch: pytest.MonkeyPatch, sync: bool) -> None:
    """With two ranks, β moves on the all-reduced count (the other rank faked by a patch)."""
    reduced = []

    def fake_all_reduce(tensor: torch.Tensor, *args, **kwargs) -> None:
        reduced.append(tensor.clone())
        tensor += torch.tensor([30.0, 6.0, 0.0], dtype=tensor.dtype)  # other rank: 30 over 6

    monkeypatch.setattr(targets_module, "_distributed_world_size", lambda: 2)
    monkeypatch.setattr(targets_module.dist, "all_reduce", fake_all_reduce)
    target = AdaptiveTarget(initial_beta=0.5, target_norm=1.0, sync_distributed=sync)
    target.process(torch.zeros(2, 3, 4), torch.tensor(1.0))  # this rank: 0 non-zeros over 6
    if sync:
        assert len(reduced) == 1 and reduced[0].tolist() == [0.0, 6.0, 0.0]  # no veto
        assert float(target.grad_norm) == pytest.approx(0.9 + 0.1 * 30 / 12)
        assert float(target.beta) == pytest.approx(0.5 - 1e-3)
    else:
        assert reduced == []
        assert float(target.grad_norm) == pytest.approx(0.9)
        assert float(target.beta) == pytest.approx(0.5 + 1e-3)


def test_make_target_forms() -> None:
    assert isinstance(make_target(None), AdaptiveTarget)
    fixed = make_target("fixed", lambda_=3.0)
    assert isinstance(fixed, FixedTarget) and fixed.lambda_ == 3.0
    adaptive = make_target({"name": "adaptive", "target_norm": 4.0})
    assert isinstance(adaptive, AdaptiveTarget) and adaptive.target_norm == 4.0
    overridden = make_target({"name": "fixed", "lambda_": 2.0}, lambda_=3.0)
    assert isinstance(overridden, FixedTarget) and overridden.lambda_ == 3.0  # keywords win
    assert make_target(adaptive) is adaptive
    rebuilt = make_target(adaptive.config())
    assert rebuilt.config() == adaptive.config()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sync", [True, False])
def test_a_skipped_step_joins_the_count_all_reduce_with_a_veto(
    monkeypatch: pytest.MonkeyPatch, sync: bool, dtype: torch.dtype
) -> None:
    """A rank skipping its backward sends (0, 0, veto 1) to the all-reduce that
    :meth:`AdaptiveTarget.process` runs on the other ranks, only when it syncs at all, in the
    dtype process sends (the state's: float64 after model.double()); a veto received there
    leaves β, c̄ and Δ as they are."""
    reduced = []

    def fake_all_reduce(tensor: torch.Tensor, *args, **kwargs) -> None:
        reduced.append(tensor.clone())
        tensor += torch.tensor([0.0, 0.0, 1.0], dtype=tensor.dtype)  # other rank: skipped

    monkeypatch.setattr(targets_module, "_distributed_world_size", lambda: 2)
    monkeypatch.setattr(targets_module.dist, "all_reduce", fake_all_reduce)
    target = AdaptiveTarget(initial_beta=0.5, momentum=0.5, sync_distributed=sync).to(dtype)
    target.skip_step(torch.device("cpu"))
    assert [t.tolist() for t in reduced] == ([[0.0, 0.0, 1.0]] if sync else [])
    before = {name: value.clone() for name, value in target.state_dict().items()}
    gradient = _gradient_with_nonzeros(12).to(dtype)  # 12 over 6 on this rank
    target.process(gradient, torch.tensor(1.0, dtype=dtype))
    assert len({t.dtype for t in reduced}) == (1 if sync else 0)  # one dtype on both paths
    moved = any(not torch.equal(target.state_dict()[n], v) for n, v in before.items())
    assert moved is not sync  # vetoed when synced; a plain local step otherwise


def test_a_zero_theta_with_a_zero_incoming_gradient_is_not_reported() -> None:
    """dy = 0 gives λ = 0 whatever θ is, so θ = 0 then is no deadlock: no warning, and the
    check stays armed for a later step with dy ≠ 0."""
    import warnings

    target = AdaptiveTarget()
    zeros = torch.zeros(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(target.step_size(zeros, zeros)) == 0.0
    with pytest.warns(RuntimeWarning, match="θ is all zeros"):
        target.step_size(zeros, torch.ones(3, 4))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: make_target("adaptve"), ValueError, "Did you mean 'adaptive'"),
        (lambda: make_target({"lambda_": 2.0}), ValueError, "needs a 'name' key"),
        (lambda: make_target(FixedTarget(), lambda_=2.0), ValueError, "cannot be applied"),
        (lambda: make_target("fixed", lam=2.0), TypeError, "does not accept parameters"),
        (lambda: make_target(3), TypeError, "target must be"),
        (lambda: FixedTarget(0.0), ValueError, "lambda_ must be a finite number > 0"),
        (lambda: FixedTarget(-1.0), ValueError, "lambda_ must be a finite number > 0"),
        (lambda: AdaptiveTarget(update_step=-1e-3), ValueError, "update_step must be"),
        (lambda: AdaptiveTarget(decay=1.5), ValueError, "decay must be in"),
        (lambda: AdaptiveTarget(initial_beta=-0.1), ValueError, "initial_beta must be"),
    ],
)
def test_target_errors(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call()


def test_an_empty_batch_leaves_the_adaptive_state_as_it_is() -> None:
    estimator = AIMLE(target=AdaptiveTarget(initial_beta=0.5, target_norm=2.0), noise=None)
    theta = torch.randn(4, 6, requires_grad=True)
    estimator(lambda t: topk_mask(t, 2), theta).pow(2).sum().backward()  # one ordinary step
    before = {name: value.clone() for name, value in estimator.target.state_dict().items()}
    empty = torch.randn(0, 6, requires_grad=True)
    estimator(lambda t: topk_mask(t, 2), empty).sum().backward()
    after = estimator.target.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert torch.isfinite(after["grad_norm"])


@pytest.mark.parametrize("scale", [65536.0, 1e-4])
def test_half_precision_steps_are_taken_in_single_precision(scale: float) -> None:
    """Loss-scaled (×65536) or tiny dy: ‖dy‖ or λ leave float16's range, λ·dy does not."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(256, 50, generator=gen).half()
    dy = (torch.randn(256, 50, generator=gen) * 1e-2 * scale).half()
    target = AdaptiveTarget()
    step = target.step_size(theta, dy)
    exact = target.step_size(theta.float(), dy.float())  # the same values, in float32
    assert step.dtype == torch.float32 and torch.isfinite(step) and step > 0
    torch.testing.assert_close(step, exact, rtol=1e-6, atol=0.0)
    move = targets_module.times_step(step, dy)  # kept in float32: λ·dy can leave float16's range
    assert move.dtype == torch.float32 and torch.isfinite(move).all()
    torch.testing.assert_close(move, exact * dy.float(), rtol=1e-6, atol=0.0)
    difference = _gradient_with_nonzeros(20, shape=(8, 1, 20)).half()
    scaled = target.process(difference, step)
    assert scaled.dtype == torch.float16
    assert torch.equal(scaled, (difference.float() / exact).half())


def test_aimle_in_half_precision_with_a_loss_scaled_gradient() -> None:
    """‖dy‖ = inf in float16 used to make λ = 0 and every gradient 0."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(256, 50, generator=gen).half().requires_grad_()
    dy = (torch.randn(256, 50, generator=gen) * 1e-2 * 65536).half()
    assert torch.isinf(torch.linalg.vector_norm(dy))  # > 65504
    estimator = AIMLE(target=AdaptiveTarget(), noise=None, symmetric=True)
    estimator(lambda t: topk_mask(t, 5), theta).backward(dy)
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    assert int(theta.grad.count_nonzero()) > 0


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_keeps_the_adaptive_state_in_single_precision(low) -> None:
    """``module.half()`` moves β, c̄ and Δ but does not round them: 50 steps of +η from β = 2
    end at 2 + 50η, as in a float32 model (bfloat16 rounded every step back to 2, float16
    moved by 2η)."""
    layer = torch.nn.Module()
    layer.target = AdaptiveTarget(initial_beta=2.0, target_norm=100.0, update_step=1e-3)
    layer.to(low)
    assert {buffer.dtype for buffer in layer.target.buffers()} == {torch.float32}
    reference = AdaptiveTarget(initial_beta=2.0, target_norm=100.0, update_step=1e-3)
    step = torch.tensor(1.0)
    for _ in range(50):
        for target in (layer.target, reference):
            target.process(_gradient_with_nonzeros(3).to(low), step)
    assert torch.equal(layer.target.beta, reference.beta)
    torch.testing.assert_close(layer.target.beta, torch.tensor(2.05), rtol=0, atol=1e-5)
    layer.double()  # a wider dtype is taken
    assert {buffer.dtype for buffer in layer.target.buffers()} == {torch.float64}
    layer.half()  # and kept
    assert {buffer.dtype for buffer in layer.target.buffers()} == {torch.float64}


@pytest.mark.parametrize(
    "estimator",
    [
        lambda: IMLE(lambda_=10.0, noise=None),
        lambda: AIMLE(target=FixedTarget(10.0), noise=None),
        lambda: Blackbox(10.0),
    ],
    ids=["imle", "aimle-fixed", "blackbox"],
)
def test_a_half_precision_target_step_beyond_float16_is_taken_in_float32(estimator) -> None:
    """λ·dy = 10 · 2^13 · 2 overflows float16 while dy does not: the target θ − λ·dy is built
    and solved in float32, and the gradient equals the one of a float32 θ (it used to reach
    the solver as inf, which the built-in top-k refused, blaming θ)."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(4, 10, generator=gen)
    dy = torch.zeros(4, 10)
    dy[:, :3] = -(2.0**14)  # ∂L/∂z of a loss pulling the first three entries in, loss-scaled
    grads = []
    for dtype in (torch.float16, torch.float32):
        theta = values.to(dtype).requires_grad_()
        estimator()(get_solver("topk", k=3), theta).backward(dy.to(dtype))
        assert theta.grad is not None and theta.grad.dtype == dtype
        grads.append(theta.grad.float())
    assert torch.isfinite(grads[0]).all() and int(grads[0].count_nonzero()) > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=0.0)


@pytest.mark.parametrize("name", ["aimle", "imle", "blackbox"])
def test_an_overflowing_float16_gradient_reaches_the_loss_scaler_as_nan(name: str) -> None:
    """GradScaler expects non-finite gradients after an overflow and skips that step: in
    float16 an infinite ∂L/∂z gives a NaN gradient (no solver call, β unchanged) instead of
    an error, so the scaler skips the step and lowers its scale."""
    layer = DifferentiableSolver("topk", build_estimator(name), k=2)
    before = {key: value.clone() for key, value in layer.state_dict().items()}
    weight = torch.nn.Parameter(torch.randn(3, 6))  # float32, as GradScaler wants
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    theta = weight.half()  # an autocast network's float16 output
    loss = (layer(theta).float() * 1e3).sum()  # ∂L/∂z = 1e3 · 2^16 > 65504 in float16
    scaler.scale(loss).backward()
    assert weight.grad is not None and torch.isnan(weight.grad).all()
    assert all(torch.equal(layer.state_dict()[key], value) for key, value in before.items())
    kept = weight.detach().clone()
    scaler.step(optimizer)  # skipped
    scaler.update()
    assert torch.equal(weight.detach(), kept) and scaler.get_scale() < 2.0**16


@pytest.mark.parametrize("name", ["aimle", "imle", "blackbox"])
def test_an_overflowing_float16_gradient_with_several_samples_gives_theta_a_nan_gradient(
    name: str,
) -> None:
    """The skipped step's NaN gradient has θ's shape [B, *S], not the samples' [B·N, *S]."""
    samples = {} if name == "blackbox" else {"samples": 3}
    estimator = build_estimator(name, **samples)
    theta = torch.randn(4, 6).half().requires_grad_()
    z = estimator(get_solver("topk", k=2), theta)
    dy = torch.ones_like(z)
    dy[1, 2] = math.inf
    z.backward(dy)
    assert theta.grad is not None and theta.grad.shape == (4, 6)
    assert theta.grad.dtype == torch.float16 and torch.isnan(theta.grad).all()


def test_infinite_entries_of_theta_leave_the_adaptive_step_finite() -> None:
    """±inf entries (a mask, an adjacency's missing edges) are left out of ‖θ‖: λ stays the
    one of the finite entries, and the gradient is that of the finite problem."""
    gen = torch.Generator().manual_seed(4)
    values = torch.randn(5, 8, generator=gen)
    keep = torch.ones(5, 8, dtype=torch.bool)
    keep[:, 6:] = False
    dy = torch.randn(5, 8, generator=gen)
    target = AdaptiveTarget(initial_beta=0.5)
    masked = values.masked_fill(~keep, -math.inf)
    expected = 0.5 * torch.linalg.vector_norm(values[keep]) / torch.linalg.vector_norm(dy)
    torch.testing.assert_close(target.step_size(masked, dy), expected)
    theta = masked.clone().requires_grad_()
    estimator = AIMLE(target=AdaptiveTarget(), noise=None, symmetric=True)
    estimator(lambda t: topk_mask(t, 2), theta).backward(dy)
    assert theta.grad is not None and torch.isfinite(theta.grad).all()
    assert int(theta.grad[:, :6].count_nonzero()) > 0 and not theta.grad[:, 6:].any()


def test_an_all_zero_theta_is_reported_once() -> None:
    """λ = β·‖θ‖/‖dy‖ is 0 for every β when θ = 0 (a zero-initialised output layer): the
    gradient is zero and θ never moves. The target says so, once."""
    import warnings

    head = torch.nn.Linear(4, 6)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    layer = DifferentiableSolver("topk", AIMLE(), k=2)
    with pytest.warns(RuntimeWarning, match="θ is all zeros"):
        layer(head(torch.randn(3, 4))).sum().backward()
    assert head.weight.grad is not None and not head.weight.grad.any()  # the deadlock
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(head(torch.randn(3, 4))).sum().backward()  # said once
        moving = DifferentiableSolver("topk", AIMLE(), k=2)
        moving(torch.randn(3, 6, requires_grad=True)).sum().backward()  # no false alarm


def _skip_worker(rank: int, port: int, folder: str) -> None:
    """One of two gloo ranks: rank 0's float16 ∂L/∂z overflows, rank 1's does not."""
    import datetime
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    layer = DifferentiableSolver("topk", AIMLE(), k=2)
    generator = torch.Generator().manual_seed(rank)
    theta = torch.randn(4, 6, generator=generator).half().requires_grad_()
    z = layer(theta)
    dy = torch.ones_like(z)
    if rank == 0:
        dy[0, 0] = math.inf
    z.backward(dy)
    bucket = torch.full((3,), float(rank + 1))  # the next collective, e.g. DDP's gradients
    dist.all_reduce(bucket)
    state = {"beta": float(layer.estimator.beta), "bucket": bucket.tolist()}
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
        json.dump(state, handle)
    dist.destroy_process_group()


def test_a_rank_that_skips_its_step_keeps_the_collectives_paired(tmp_path) -> None:
    """Under torch.distributed the count all-reduce of AdaptiveTarget.process must happen on
    every rank: a rank skipping its backward (float16 overflow) used to leave it out, so the
    next collective paired with the wrong one (a hang on NCCL). Now it joins with a veto, and
    no rank moves β."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_skip_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["bucket"] == ranks[1]["bucket"] == [3.0, 3.0, 3.0]
    assert ranks[0]["beta"] == ranks[1]["beta"] == AdaptiveTarget().initial_beta
