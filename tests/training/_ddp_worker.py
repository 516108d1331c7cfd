"""Run under ``torchrun --nproc_per_node 2``: smoke-train L2X and record every rank's state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aimle_zoo.recipes import DataOptions, run_training


def main(out: Path) -> None:
    torch.set_num_threads(1)
    result = run_training(
        "l2x-xor",
        out / "run",
        data_options=DataOptions(smoke=True, progress=False),
        epochs=2,
        max_steps_per_epoch=6,
        batch_size=32,
        progress=False,
    )
    rank, model = dist.get_rank(), result.model
    state = {
        "world_size": dist.get_world_size(),
        "beta": float(model.latent_layer.estimator.beta),
        "weight_sum": float(sum(p.double().sum() for p in model.parameters())),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(state))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
