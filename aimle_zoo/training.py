"""Training and evaluation loops shared by every zoo model.

A model only has to provide ``training_loss(batch) -> (loss, logs)`` and
``evaluate_batch(batch) -> dict[str, Tensor]``; this module adds the rest: Adam, a progress bar
with the live loss and the estimator's λ/β, per-epoch metrics in a JSON-lines log, the
best-by-validation checkpoint, resumable ``last`` checkpoints (optimizer, RNG and the adaptive
estimator state included), and DistributedDataParallel under ``torchrun`` (gloo on CPU, NCCL on
GPU).

Run layout (``out_dir``)::

    metrics.jsonl        one JSON object per epoch (train logs, validation metrics, λ/β)
    best/                save_pretrained folder of the best validation epoch
    last/                save_pretrained folder of the last epoch or step, with the trainer
                         state (trainer_state.json + trainer_state.safetensors)
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ._devices import resolve_device
from ._io import atomic_directory, atomic_file, remove_tree

TRAINER_STATE = "trainer_state.json"
TRAINER_TENSORS = "trainer_state.safetensors"
METRICS_LOG = "metrics.jsonl"
#: The test metrics of a run's best checkpoint, written after training by ``run_training``.
TEST_METRICS = "test_metrics.json"


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (all JSON-able; saved with every checkpoint)."""

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    #: epochs (0-based) from which the learning rate is multiplied by ``lr_gamma`` once more:
    #: epoch e trains at lr·γ^|{m <= e}|, as ``torch.optim.lr_scheduler.MultiStepLR`` stepped
    #: once per epoch (the Warcraft recipe's 30 and 40); empty: a constant rate
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "cpu"
    select_metric: str = "loss"
    select_mode: Literal["min", "max", "last"] = "min"  # "last": best/ is the last epoch
    max_steps_per_epoch: int | None = None  # smoke runs: cut every epoch short
    checkpoint_every: int | None = None  # also rewrite last/ every this many steps
    shuffle: bool = True
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # recipe-specific, logged only

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based): lr·γ^(milestones reached)."""
        return self.lr * self.lr_gamma ** sum(
            epoch >= milestone for milestone in self.lr_milestones
        )

    def __post_init__(self) -> None:
        """Refuse values no run can use, before anything touches a run folder."""
        at_least_one = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "max_steps_per_epoch": self.max_steps_per_epoch,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in at_least_one.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        positive = {"lr": self.lr, "adam_eps": self.adam_eps, "grad_clip": self.grad_clip}
        for name, number in positive.items():
            if number is not None and not (math.isfinite(number) and number > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {number}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.select_mode not in ("min", "max", "last"):
            raise ValueError(f"select_mode must be min, max or last, got {self.select_mode!r}")
        milestones = list(self.lr_milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones):
            raise ValueError(f"lr_milestones must be epochs >= 1, got {self.lr_milestones!r}")
        if milestones != sorted(set(milestones)):
            raise ValueError(f"lr_milestones must increase, got {self.lr_milestones!r}")
        self.lr_milestones = tuple(milestones)  # a JSON list read back from a saved run too
        if not (math.isfinite(self.lr_gamma) and 0 < self.lr_gamma <= 1):
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.seed < 2**63 - 2**16:  # torch.manual_seed's range, with room for ranks
            raise ValueError(f"seed must be in [0, 2^63 - 2^16), got {self.seed}")


@dataclass
class TrainResult:
    """Where a run ended: the trained model (last epoch), best metrics, checkpoint folders."""

    model: nn.Module
    best_metrics: dict[str, float]
    best_epoch: int
    best_dir: Path
    last_dir: Path
    history: list[dict[str, Any]]


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """True outside ``torchrun`` and on rank 0 inside it."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _init_distributed(device_type: str) -> _DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "gloo":
            # A gloo group left to the interpreter's teardown can abort the process (its
            # threads still hold tensors): the group we made is destroyed while Python is still
            # whole. (Not NCCL: its shutdown may wait on peers stuck in a collective.)
            atexit.register(_destroy_process_group)
    return _DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _resolve_device(device: str, info: _DistInfo) -> torch.device:
    """:func:`resolve_device` with an index: ``"cuda"`` is this process's GPU under ``torchrun``
    (its local rank among the GPUs it sees: one each where a launcher hides the others), else
    the current CUDA device."""
    resolved = resolve_device(device)
    if resolved.type != "cuda" or resolved.index is not None:
        return resolved
    if info.world_size == 1:
        return torch.device("cuda", torch.cuda.current_device())
    visible = torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda", 0)
    if info.local_rank >= visible:
        raise ValueError(
            f"this process has local rank {info.local_rank} but sees {visible} GPUs: NCCL needs "
            f"a GPU per process; run at most {visible} processes per node (torchrun "
            f"--nproc_per_node {visible})"
        )
    return torch.device("cuda", info.local_rank)


class _LossModule(nn.Module):
    """Routes ``forward`` to ``training_loss`` so DistributedDataParallel sees the call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> tuple[Tensor, Mapping[str, float]]:
        return self.model.training_loss(batch)  # type: ignore[operator]


# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def move_to(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device`` (asynchronously only towards an
    accelerator: a copy to the CPU could be read before it lands)."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=torch.device(device).type != "cpu")
    if isinstance(batch, Mapping):
        return {key: move_to(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(value, device) for value in batch)
    return batch


def estimator_diagnostics(model: nn.Module) -> dict[str, float]:
    """λ, β and gradient sparsity of the model's latent layer, if it exposes them."""
    layer = getattr(model, "latent_layer", None)
    estimator = getattr(layer, "estimator", None)
    diagnostics = getattr(estimator, "diagnostics", None)
    return dict(diagnostics()) if callable(diagnostics) else {}


def reduce_metrics(model: nn.Module, batches: list[Mapping[str, Tensor]]) -> dict[str, float]:
    """Combine per-batch metric tensors into numbers.

    Uses ``model.reduce_metrics`` when the model defines it; otherwise each metric is a tensor of
    per-instance values and the result is their mean over the whole dataset.
    """
    custom = getattr(model, "reduce_metrics", None)
    if callable(custom):
        return dict(custom(batches))
    keys = batches[0].keys() if batches else ()
    return {
        key: float(torch.cat([b[key].detach().reshape(-1).double().cpu() for b in batches]).mean())
        for key in keys
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset[Any],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
    description: str = "evaluate",
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset`` in eval mode (noise-free MAP latent).

    ``options`` are keyword arguments of ``model.evaluate_batch`` (e.g. the discrete VAE's
    ``reference_test_loss=True``, which samples codes). The evaluation draws its random numbers
    from a generator state seeded with ``seed`` and restored afterwards, so sampled metrics are
    reproducible and the caller's random stream is untouched. ``device`` (default: where the
    model's parameters are) is where the batches go; the model is not moved.
    """
    _check_not_empty(dataset, f"{description}: the dataset")
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    first = next(iter(model.parameters()), None)
    if device is None:
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            torch.manual_seed(seed)
            batches = [
                model.evaluate_batch(move_to(batch, device), **(options or {}))  # type: ignore[operator]
                for batch in tqdm(loader, desc=description, disable=not progress, leave=False)
            ]
    finally:
        model.train(was_training)
    return reduce_metrics(model, batches)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if mode == "last":
        return True
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


#: What a run leaves in its folder.
RUN_ARTEFACTS = (METRICS_LOG, "best", "last", TEST_METRICS)


def _previous_run(out: Path, overwrite: bool) -> list[str]:
    """The artefacts of a run already in ``out`` (to delete); an error unless ``overwrite``."""
    _check_not_a_file(out)
    found = [name for name in RUN_ARTEFACTS if (out / name).exists()]
    if found and not overwrite:
        raise FileExistsError(
            f"{out} already holds a training run ({', '.join(found)}); continue it with "
            "resume=True (--resume), start over with overwrite=True (--overwrite), or choose "
            "another folder"
        )
    return found


def _check_not_a_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a run folder; choose another folder")


def _stale_results(out: Path) -> list[str]:
    """What a resumed run makes stale: the test metrics of the best checkpoint so far (the
    resumed epochs may replace ``best/``; the run writes them again when it finishes)."""
    return [TEST_METRICS] if (out / TEST_METRICS).exists() else []


def _delete(out: Path, names: list[str]) -> None:
    for name in names:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


@contextmanager
def _maybe_barrier(info: _DistInfo) -> Iterator[None]:
    try:
        yield
    finally:
        if info.world_size > 1:
            dist.barrier()


# ----------------------------------------------------------------------------- checkpoints


@dataclass
class _Progress:
    """Where training stands: enough to continue bit for bit after a stop."""

    epoch: int = 0  # the epoch in progress (or the next one to start)
    step: int = 0  # optimizer steps already taken in ``epoch``
    totals: dict[str, float] = field(default_factory=dict)  # running sums of the epoch's logs
    epoch_rng: Tensor | None = None  # torch RNG at the start of ``epoch`` (replays its shuffle)
    best_value: float | None = None
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time of ``epoch`` before the last stop


def save_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike[str],
    trainer_state: tuple[dict[str, Any], dict[str, Tensor]] | None = None,
) -> Path:
    """Write ``model.save_pretrained`` and the trainer state atomically into ``directory``.

    The trainer state is ``trainer_state.json`` (counters, metrics, RNG states of Python and
    NumPy) and ``trainer_state.safetensors`` (optimizer tensors, torch RNG states): no pickles.
    """
    from safetensors.torch import save

    from .models._base import default_repo_id

    name = getattr(model, "model_name", None)
    # the card names the run (runs/X/best: aimle-zoo/X), not the hidden staging folder
    repo_id = default_repo_id(directory, name) if name else None
    with _STOP_SIGNALS.writes(), atomic_directory(directory) as staging:
        options = {"repo_id": repo_id} if repo_id else {}  # a zoo model's keyword
        model.save_pretrained(staging, **options)  # type: ignore[operator]
        if trainer_state is not None:
            meta, tensors = trainer_state
            with atomic_file(staging / TRAINER_STATE, "w") as handle:
                json.dump(meta, handle)
            with atomic_file(staging / TRAINER_TENSORS) as handle:  # a normal file's mode
                handle.write(save(tensors))
    return Path(directory)


def _rng_states(device: torch.device, progress: _Progress) -> dict[str, Any]:
    """This process's own state: random states (torch on the CPU, and CUDA on a CUDA device,
    the epoch-start torch state, Python and NumPy) and the running sums of its epoch's logs."""
    numpy_rng = cast(tuple[Any, ...], np.random.get_state())
    states: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": [numpy_rng[0], numpy_rng[1].tolist(), *numpy_rng[2:]],
        "totals": dict(progress.totals),
    }
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    if progress.epoch_rng is not None:
        states["epoch_rng"] = progress.epoch_rng
    return states


def _gather_rng_states(
    device: torch.device, progress: _Progress, info: _DistInfo
) -> list[dict[str, Any]]:
    """Every rank's :func:`_rng_states`, in rank order (a collective under ``torchrun``)."""
    own = _rng_states(device, progress)
    if info.world_size == 1:
        return [own]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, own)
    return cast(list[dict[str, Any]], gathered)


def _trainer_state(
    progress: _Progress,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    rng_states: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON and tensor halves of the trainer state; rank r's random states are stored
    under ``<kind>`` for rank 0 and ``<kind>.rank<r>`` for the others, and the running sums of
    its epoch's logs under ``totals`` (``rank_rng.<r>.totals``)."""
    optimizer_state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, Any] = {}
    for rank, states in enumerate(rng_states):
        suffix = f".rank{rank}" if rank else ""
        for kind in ("torch_rng", "cuda_rng", "epoch_rng"):
            if kind in states:
                tensors[kind + suffix] = states[kind].cpu()
        ranks[str(rank)] = {kind: states[kind] for kind in ("python_rng", "numpy_rng", "totals")}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    meta = {
        "epoch": progress.epoch,
        "step": progress.step,
        "seconds": progress.seconds,
        "world_size": len(rng_states),
        "totals": ranks["0"]["totals"],
        "best_value": progress.best_value,
        "best_epoch": progress.best_epoch,
        "best_metrics": progress.best_metrics,
        "history": progress.history,
        "config": asdict(config),
        "optimizer_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "python_rng": ranks["0"]["python_rng"],
        "numpy_rng": ranks["0"]["numpy_rng"],
        "rank_rng": {rank: value for rank, value in ranks.items() if rank != "0"},
    }
    return meta, tensors


#: Settings a resumed run must share with the saved one (the others, such as ``epochs``, may
#: change): the batch position, the data order, the optimizer and the best-checkpoint choice.
RESUME_FIELDS = (
    "batch_size", "lr", "lr_milestones", "lr_gamma", "adam_eps", "weight_decay", "grad_clip",
    "seed", "select_metric", "select_mode", "max_steps_per_epoch", "shuffle",
)  # fmt: skip


def changed_settings(
    saved: Mapping[str, Any], asked: Mapping[str, Any], fields: Sequence[str] = RESUME_FIELDS
) -> str:
    """``"key=saved (now asked), ..."`` for the ``fields`` a saved run's config and ``asked``
    disagree on (``""`` if none; keys an older state lacks are not compared)."""

    def plain(value: Any) -> Any:  # as JSON keeps it: a tuple comes back as a list
        return list(value) if isinstance(value, tuple) else value

    differ = [key for key in fields if key in saved and plain(saved[key]) != plain(asked[key])]
    return ", ".join(f"{key}={saved[key]!r} (now {asked[key]!r})" for key in differ)


#: Keys of ``TrainConfig.extra`` a resumed run must share with the saved one (the task, the
#: estimator and the data size, as recorded by the recipes).
RESUME_EXTRA = ("recipe", "estimator", "smoke")


#: What to do about a damaged ``last/``.
_RESUME_ADVICE = "restore last/ from a copy of the run, or start over with --overwrite"


def check_run_folder(
    out: str | os.PathLike[str], config: TrainConfig, *, resume: bool, overwrite: bool
) -> None:
    """What :func:`train` checks of ``out`` before it starts, for a caller to check first
    (before building a large dataset): a fresh run needs an empty folder or ``overwrite``, a
    resumed one a saved run made with ``config``'s settings and process count.

    Raises:
        FileExistsError, ValueError: as :func:`train` would.
    """
    folder = Path(out)
    _check_not_a_file(folder)
    if not resume:
        _previous_run(folder, overwrite)
        return
    state = folder / "last" / TRAINER_STATE
    if state.exists():  # else train() says what is missing
        meta = read_trainer_state(state, "cannot resume", _RESUME_ADVICE)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        _check_resumable(meta, asdict(config), folder / "last", world_size)


def _check_resumable(
    meta: Mapping[str, Any], asked: Mapping[str, Any], last_dir: Path, world_size: int
) -> None:
    """Refuse to continue the run in ``last_dir`` other than exactly as it was made."""
    saved = meta["config"]
    problems = []
    settings = changed_settings(saved, asked)
    if settings:
        problems.append(settings)
    saved_extra, asked_extra = saved.get("extra", {}), asked.get("extra", {})
    extra = changed_settings(
        saved_extra, asked_extra, [key for key in RESUME_EXTRA if key in asked_extra]
    )
    if extra:
        problems.append(extra)
    saved_world = int(meta.get("world_size", 1))
    if saved_world != world_size:
        problems.append(f"processes={saved_world} (now {world_size})")
    if problems:
        raise ValueError(
            f"cannot resume {last_dir} with other settings: {'; '.join(problems)}. A resumed "
            "run continues exactly as it was made: give the saved values (settings left out "
            "of a resumed recipe run are the run's), use as many processes, or start a new run"
        )
    if int(meta["epoch"]) > asked["epochs"]:
        raise ValueError(
            f"cannot resume {last_dir} with epochs={asked['epochs']}: it has already trained "
            f"{meta['epoch']} epochs; pass more epochs to continue it"
        )


def _load_last(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    last_dir: Path,
    device: torch.device,
    config: TrainConfig,
    info: _DistInfo,
) -> _Progress:
    weights = "model.safetensors"  # what save_pretrained writes
    if not last_dir.is_dir():
        raise FileNotFoundError(
            f"cannot resume: there is no run in {last_dir.parent} ({last_dir} does not exist); "
            "start it without --resume, or point --out at the run to continue"
        )
    paths = [last_dir / name for name in (weights, TRAINER_STATE, TRAINER_TENSORS)]
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"cannot resume: {last_dir} lacks {', '.join(missing)}; start without --resume or "
            "point --out at the run to continue"
        )
    meta = read_trainer_state(paths[1], "cannot resume", _RESUME_ADVICE)
    _check_resumable(meta, asdict(config), last_dir, info.world_size)
    advice = _RESUME_ADVICE
    weights_state = _read_tensors(paths[0], device, advice)
    try:
        model.load_state_dict(weights_state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"cannot resume: {paths[0]} does not fit the model ({first}); {advice}"
        ) from err
    tensors = _read_tensors(paths[2], torch.device("cpu"), advice)
    try:
        return _restore_progress(meta, tensors, optimizer, device, info)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(
            f"cannot resume: the trainer state in {last_dir} is incomplete or inconsistent "
            f"({type(err).__name__}: {err}); {advice}"
        ) from err


def read_trainer_state(path: Path, what: str, advice: str) -> dict[str, Any]:
    """The trainer state ``last/trainer_state.json`` of a run.

    Raises:
        ValueError: ``"{what}: {path} is not a trainer state ...; {advice}"`` when the file is
            unreadable, not JSON, or lacks the run's config, epoch and step.
    """
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if (
        not isinstance(meta, dict)
        or not {"config", "epoch", "step"} <= meta.keys()
        or not all(isinstance(meta[key], int) for key in ("epoch", "step"))
        or not isinstance(meta["config"], dict)
        or not isinstance(meta["config"].get("epochs"), int)
        or not isinstance(meta["config"].get("extra", {}), dict)
    ):
        raise ValueError(f"{what}: {path} is not a trainer state written by aimle-zoo; {advice}")
    return meta


def _read_tensors(path: Path, device: torch.device, advice: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file, or a ValueError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"cannot resume: {path} cannot be read ({err}); {advice}") from err


def _restore_progress(
    meta: dict[str, Any],
    tensors: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    info: _DistInfo,
) -> _Progress:
    """Optimizer state, random states and the position in the run, from a trainer state."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            # load_state_dict moves each moment to its parameter's device and keeps Adam's
            # `step` on the CPU, as a fresh run does (on a GPU it would cost two host syncs per
            # parameter and step)
            state.setdefault(int(index), {})[key] = value
    for index, entries in meta["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    _check_adam_state(state, optimizer)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_groups"]})
    suffix = f".rank{info.rank}" if info.rank else ""
    own = meta if not info.rank else meta["rank_rng"][str(info.rank)]
    version, internal, gauss = own["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = own["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(tensors["torch_rng" + suffix])
    if device.type == "cuda" and "cuda_rng" + suffix in tensors:
        torch.cuda.set_rng_state(tensors["cuda_rng" + suffix], device)
    return _Progress(
        epoch=int(meta["epoch"]),
        step=int(meta["step"]),
        seconds=float(meta.get("seconds", 0.0)),
        totals=dict(own.get("totals", meta["totals"])),  # older states: rank 0's sums
        epoch_rng=tensors.get("epoch_rng" + suffix),
        best_value=meta["best_value"],
        best_epoch=int(meta["best_epoch"]),
        best_metrics=dict(meta["best_metrics"]),
        history=list(meta["history"]),
    )


def _check_adam_state(
    state: Mapping[int, Mapping[str, Any]], optimizer: torch.optim.Optimizer
) -> None:
    """Refuse an Adam state that would fail (or silently misbehave) at the first step: every
    parameter with a state needs ``step``, ``exp_avg`` and ``exp_avg_sq`` of its own shape."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    needed = ("step", "exp_avg", "exp_avg_sq")
    for index, entries in state.items():
        if not 0 <= index < len(params):
            raise ValueError(f"optimizer state for parameter {index}, the model has {len(params)}")
        missing = [key for key in needed if key not in entries]
        if missing:
            raise ValueError(f"optimizer state of parameter {index} lacks {', '.join(missing)}")
        shape = tuple(params[index].shape)
        for key in ("exp_avg", "exp_avg_sq"):
            if tuple(entries[key].shape) != shape:
                raise ValueError(
                    f"optimizer.{index}.{key} has shape {tuple(entries[key].shape)}, its "
                    f"parameter {shape}"
                )


# ----------------------------------------------------------------------------- training


def train(
    model: nn.Module,
    train_set: Dataset[Any],
    valid_set: Dataset[Any] | None,
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``model`` with Adam; keep the best checkpoint by ``config.select_metric``.

    ``last/`` is rewritten at the end of every epoch and, with ``config.checkpoint_every``,
    every that many steps; ``resume=True`` continues from it exactly (weights, optimizer,
    adaptive estimator state, RNG states and the position inside the epoch), and rewrites
    ``metrics.jsonl`` from the epochs it records. A fresh run refuses a folder that already
    holds one (its ``metrics.jsonl``, ``best/`` or ``last/``) unless ``overwrite=True``, which
    deletes them first.

    Under ``torchrun`` every process runs this function; gradients are averaged by
    DistributedDataParallel and the AIMLE adaptive statistics are all-reduced by the estimator,
    so every rank holds the same β. Only rank 0 writes logs and checkpoints.
    """
    if resume and overwrite:
        raise ValueError("resume=True continues the run in out_dir, overwrite=True deletes it")
    _check_not_empty(train_set, "train: the training set")
    if valid_set is not None:
        _check_not_empty(valid_set, "train: the validation set (pass None to train without one)")
    with _STOP_SIGNALS.installed():
        return _train(model, train_set, valid_set, Path(out_dir), config, resume, overwrite)


def _check_not_empty(dataset: Dataset[Any], what: str) -> None:
    """Refuse a map-style dataset with no items (an iterable one cannot tell)."""
    if isinstance(dataset, Sized) and len(dataset) == 0:
        raise ValueError(f"{what} is empty, so there is nothing to train or measure on")


class TrainingStopped(KeyboardInterrupt):
    """Training was stopped by a signal (``signum``: SIGTERM or SIGINT); ``last/`` holds the
    last complete save, from which ``resume=True`` continues."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    def __reduce__(self) -> tuple[type[TrainingStopped], tuple[int, str]]:
        return type(self), (self.signum, str(self))


class _StopSignals:
    """SIGTERM (a scheduler's or ``timeout``'s stop) and SIGINT (Ctrl-C) raise
    :class:`TrainingStopped` (a ``KeyboardInterrupt``) during training, but never inside a
    checkpoint or log write of the main thread: a signal that arrives there is held and raised
    as soon as the write is complete, so a stop never leaves a half-written folder or a torn
    log line behind. A write that fails keeps its own error, and the held stop is raised at
    the next write's end."""

    def __init__(self) -> None:
        self.writing = 0  # depth of nested writes in progress on the main thread
        self.held: int | None = None  # the signal that arrived during a write

    def handle(self, signum: int, frame: Any) -> None:
        if self.writing:
            self.held = signum
            return
        raise TrainingStopped(signum, f"stopped by signal {signum}")

    @contextmanager
    def writes(self) -> Iterator[None]:
        """Hold stop signals until the block is done (main thread only: signals go there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.writing += 1
        try:
            yield
        finally:
            self.writing -= 1
        if not self.writing and self.held is not None:  # the block succeeded
            signum, self.held = self.held, None
            raise TrainingStopped(signum, f"stopped by signal {signum} (after finishing a save)")

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGTERM and SIGINT here for the block, except a signal the process ignores
        (``nohup``, a background job's SIGINT); a no-op off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = [
            s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) != signal.SIG_IGN
        ]
        previous = {signum: signal.signal(signum, self.handle) for signum in stops}
        try:
            yield
        finally:  # a handler installed outside Python reads as None: restore the default then
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
            self.held = None


_STOP_SIGNALS = _StopSignals()


def _remove_stale_staging(out: Path) -> None:
    """Delete the staging folders of checkpoint saves a kill cut short (``.best.*.tmp``,
    ``.last.old-*``, ...): ``atomic_directory`` names them after their target."""
    for target in ("best", "last"):
        # .last.X.tmp (the staging folder), ..last.X.tmp.Y.tmp (the model's own staging inside
        # save_checkpoint's), .last.old-PID (the retired folder of the fallback swap)
        for pattern in (f".{target}.*.tmp", f"..{target}.*.tmp", f".{target}.old-*"):
            for stale in out.glob(pattern):
                remove_tree(stale)


def _train(
    model: nn.Module,
    train_set: Dataset[Any],
    valid_set: Dataset[Any] | None,
    out: Path,
    config: TrainConfig,
    resume: bool,
    overwrite: bool,
) -> TrainResult:
    info = _init_distributed(resolve_device(config.device).type)  # nccl on CUDA, else gloo
    device = _resolve_device(config.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives use the current device of each rank
    seed_everything(config.seed + info.rank)
    best_dir, last_dir, log_path = out / "best", out / "last", out / METRICS_LOG
    found = _previous_run(out, overwrite) if not resume else _stale_results(out)
    model.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    progress = (
        _load_last(model, optimizer, last_dir, device, config, info) if resume else _Progress()
    )
    with _maybe_barrier(info):  # deleted only once the new run is known to start
        if info.is_main:
            with _STOP_SIGNALS.writes():  # an old run is deleted whole or not at all
                _delete(out, found)
            if out.is_dir():
                _remove_stale_staging(out)
    if resume and info.is_main:  # the log of the epochs the saved state has seen, no more
        with atomic_file(log_path, "w") as log:
            log.writelines(json.dumps(record) + "\n" for record in progress.history)

    loss_module: nn.Module = _LossModule(model)
    if info.world_size > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    loader, sampler = _training_loader(train_set, config, info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()

    def save_last() -> None:
        """Rewrite ``last/`` (a collective: every rank contributes its random states)."""
        nonlocal started
        now = time.perf_counter()
        progress.seconds, started = progress.seconds + now - started, now
        rng_states = _gather_rng_states(device, progress, info)
        if info.is_main:
            save_checkpoint(
                model, last_dir, _trainer_state(progress, optimizer, config, rng_states)
            )

    for epoch in range(progress.epoch, config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for group in optimizer.param_groups:  # from the epoch alone: a resume needs no state
            group["lr"] = config.lr_at(epoch)
        model.train()
        started = time.perf_counter()
        batches = _epoch_batches(loader, progress, epoch)
        _run_epoch(
            loss_module, model, optimizer, batches, config, device, info, progress, save_last
        )
        steps = max(progress.step, 1)
        epoch_logs = _mean_over_ranks(
            {key: value / steps for key, value in progress.totals.items()}, info
        )
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": config.lr_at(epoch),
            "train": epoch_logs,
            "estimator": estimator_diagnostics(model),
            "seconds": progress.seconds + time.perf_counter() - started,
        }
        with _maybe_barrier(info):
            if info.is_main:
                _validate_and_log(model, valid_set, record, config, device, progress, out)
            progress.epoch, progress.step, progress.totals = epoch + 1, 0, {}
            progress.seconds, started = 0.0, time.perf_counter()
            save_last()
    return TrainResult(
        model,
        progress.best_metrics,
        progress.best_epoch,
        best_dir,
        last_dir,
        progress.history,
    )


def _training_loader(
    train_set: Dataset[Any], config: TrainConfig, info: _DistInfo
) -> tuple[DataLoader[Any], DistributedSampler[Any] | None]:
    """The shuffled training batches: one loader, or this rank's share under ``torchrun``."""
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(train_set, shuffle=config.shuffle, seed=config.seed)
        if info.world_size > 1
        else None
    )
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=config.shuffle and sampler is None,
        sampler=sampler,
        drop_last=False,
    )
    return loader, sampler


def _validate_and_log(
    model: nn.Module,
    valid_set: Dataset[Any] | None,
    record: dict[str, Any],
    config: TrainConfig,
    device: torch.device,
    progress: _Progress,
    out: Path,
) -> None:
    """End of an epoch on rank 0: validate, keep ``best/`` if the selected metric improved
    (every epoch without a validation set), and append the epoch to the history and the log."""
    if valid_set is not None:
        record["valid"] = evaluate(
            model, valid_set, batch_size=config.eval_batch_size, device=device
        )
    metrics = record.get("valid", record["train"])
    selected = metrics.get(config.select_metric, math.nan)
    if valid_set is None or _is_better(selected, progress.best_value, config.select_mode):
        progress.best_value, progress.best_epoch = selected, record["epoch"]
        progress.best_metrics = dict(metrics)
        save_checkpoint(model, out / "best")
    progress.history.append(record)
    with _STOP_SIGNALS.writes(), (out / METRICS_LOG).open("a") as log:
        log.write(json.dumps(record) + "\n")
    # one line per epoch, also with --no-progress (the log file of a long run)
    train_loss = record["train"].get("loss", math.nan)
    line = f"epoch {record['epoch'] + 1}/{config.epochs}: train loss {train_loss:.5g}"
    if "valid" in record:
        line += f", valid {config.select_metric} {selected:.5g}"
    best = "valid" in record and progress.best_epoch == record["epoch"]
    tqdm.write(line + f" ({record['seconds']:.0f} s)" + (", best so far" if best else ""))


def _mean_over_ranks(logs: dict[str, float], info: _DistInfo) -> dict[str, float]:
    """The mean of every rank's epoch logs (each rank trained on its own share of the data);
    the logs themselves outside ``torchrun``."""
    if info.world_size == 1 or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([logs[key] for key in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        values = values.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(values)
    return {key: float(value) / info.world_size for key, value in zip(keys, values, strict=True)}


def _epoch_batches(loader: DataLoader[Any], progress: _Progress, epoch: int) -> Iterator[Any]:
    """The batches of ``epoch`` still to run: all of them, or those after a mid-epoch stop.

    The shuffle is drawn from the torch RNG when the loader's iterator is created, so a resumed
    epoch replays the epoch-start RNG state, skips the batches already trained on, and then
    continues with the RNG state saved at the stop.
    """
    if progress.epoch != epoch or progress.step == 0:
        progress.epoch, progress.step, progress.totals, progress.seconds = epoch, 0, {}, 0.0
        progress.epoch_rng = torch.get_rng_state()
        return iter(loader)
    current = torch.get_rng_state()
    if progress.epoch_rng is not None:
        torch.set_rng_state(progress.epoch_rng)
    iterator = iter(loader)
    for _ in range(progress.step):
        next(iterator)
    torch.set_rng_state(current)
    return iterator


def _run_epoch(
    loss_module: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Any],
    config: TrainConfig,
    device: torch.device,
    info: _DistInfo,
    progress: _Progress,
    save_last: Callable[[], None],
) -> None:
    limit = config.max_steps_per_epoch
    if limit is not None and progress.step >= limit:  # resumed after the epoch's last step
        return
    bar = tqdm(
        batches,
        initial=progress.step,
        desc=f"epoch {progress.epoch + 1}/{config.epochs}",
        disable=not (config.progress and info.is_main),
        leave=False,
    )
    for batch in bar:
        loss, logs = loss_module(move_to(batch, device))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {float(loss.detach())} at epoch {progress.epoch}, "
                f"step {progress.step}; lower the learning rate or check the inputs"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        progress.step += 1
        for key, value in {"loss": float(loss.detach()), **logs}.items():
            progress.totals[key] = progress.totals.get(key, 0.0) + float(value)
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
            save_last()
        if info.is_main and config.progress and (progress.step == 1 or progress.step % 10 == 0):
            postfix = {"loss": f"{float(loss.detach()):.4g}"}
            postfix.update({k: f"{v:.3g}" for k, v in estimator_diagnostics(model).items()})
            bar.set_postfix(postfix, refresh=False)
        if limit is not None and progress.step >= limit:  # before the next batch is loaded
            break
