"""Run under ``torchrun --nproc_per_node 2``: smoke-train L2X and record every rank's state.

Arguments: the output folder, then optionally the run's name, its epochs and ``resume``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aimle_zoo.recipes import DataOptions, run_training
from aimle_zoo.training import _DistInfo, _mean_over_ranks


def main(out: Path, name: str = "run", epochs: int = 2, resume: bool = False) -> None:
    torch.set_num_threads(1)
    result = run_training(
        "l2x-xor",
        out / name,
        data_options=DataOptions(smoke=True, progress=False),
        epochs=epochs,
        max_steps_per_epoch=6,
        batch_size=32,
        progress=False,
        resume=resume,
    )
    rank, model = dist.get_rank(), result.model
    state = {
        "world_size": dist.get_world_size(),
        "beta": float(model.latent_layer.estimator.beta),
        "weight_sum": float(sum(p.double().sum() for p in model.parameters())),
        "mean_rank": _mean_over_ranks({"rank": float(rank)}, _DistInfo(rank, 2))["rank"],
    }
    (out / f"{name}-rank{rank}.json").write_text(json.dumps(state))
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(
        Path(arguments[0]),
        *arguments[1:2],
        *(int(value) for value in arguments[2:3]),
        *(value == "resume" for value in arguments[3:4]),
    )
