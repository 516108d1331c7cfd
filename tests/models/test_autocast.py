"""CPU ``torch.autocast``: every zoo model trains and evaluates with low-precision networks."""

from __future__ import annotations

import pytest
import torch

from ._helpers import TINY, make_batch, tiny_model


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(TINY))
def test_every_model_trains_and_evaluates_under_cpu_autocast(name: str, dtype: torch.dtype) -> None:
    """Adam steps under autocast (float16 with a gradient scaler, as float16 training needs)
    move the parameters and keep them finite; the loss is a finite float32 number, and
    evaluation gives finite metrics near the float32 model's (the solvers' outputs are 0/1, so
    only the networks' rounding differs)."""
    model = tiny_model(name).train()
    before = {key: value.detach().clone() for key, value in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # the tiny models' gradients fit float16 unscaled; the default scale of 2^16 would overflow
    # and skip every one of these few steps while it backs off
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0, enabled=dtype == torch.float16)
    for step in range(4):
        torch.manual_seed(step)
        with torch.autocast("cpu", dtype=dtype):
            loss, _ = model.training_loss(make_batch(name, model, 6, seed=step))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped when a scaled gradient overflowed
        scaler.update()
    moved = [key for key, value in model.named_parameters() if not torch.equal(value, before[key])]
    assert moved and all(torch.isfinite(value).all() for value in model.parameters())
    model.eval()
    batch = make_batch(name, model, 6, seed=5)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=dtype):
            low = model.evaluate_batch(batch)
        full = model.evaluate_batch(batch)
    assert low.keys() == full.keys()
    for key, value in low.items():
        assert torch.isfinite(value.double()).all(), key
    loss_key = next(key for key in full if key.startswith("loss"))
    torch.testing.assert_close(
        low[loss_key].double(), full[loss_key].double(), rtol=0.1, atol=0.5, msg=loss_key
    )
