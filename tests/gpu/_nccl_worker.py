"""Run under ``torchrun --nproc_per_node G`` on G GPUs: smoke-train L2X on NCCL, record each rank.

Argument: the output folder (the run goes to ``run/``, rank r's state to ``rank{r}.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from aimle_zoo.recipes import DataOptions, run_training


def main(out: Path) -> None:
    result = run_training(
        "l2x-xor",
        out / "run",
        data_options=DataOptions(smoke=True, progress=False),
        epochs=2,
        max_steps_per_epoch=4,
        device="cuda",
        progress=False,
    )
    target = result.model.latent_layer.estimator.target
    state = {
        "backend": dist.get_backend(),
        "world_size": dist.get_world_size(),
        "beta": float(target.beta),
        "grad_norm": float(target.grad_norm),
        "weight_sum": float(sum(p.double().sum() for p in result.model.parameters())),
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(state))
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
