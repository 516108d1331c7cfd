"""The common base of zoo models: Hub round trip, strict loading, input checks, metric reduction.

Every zoo model is an ``nn.Module`` with a discrete latent layer
(:class:`~aimle_zoo.estimators.DifferentiableSolver`) and the same interface:

- ``forward(*inputs)``: the inference path. In eval mode the latent is the noise-free MAP
  solution, so the output has the batch size ``B`` of the input; in training mode the latent
  holds ``N`` samples per instance and the output has ``B·N`` rows (sample-minor: row
  ``b·N + n`` is sample ``n`` of instance ``b``).
- ``training_loss(batch) -> (loss, logs)``: the training objective (training mode, sampled
  latent) and a few floats to log.
- ``evaluate_batch(batch) -> dict[str, Tensor]``: per-batch sums (``<metric>_sum``) and counts
  (``count``, or ``<metric>_count`` for metrics defined on a subset of the batch), computed in
  eval mode with the MAP latent; :meth:`ZooModel.reduce_metrics` turns a list of them into means.
- ``example_inputs(batch_size)``: a deterministic tuple of inputs for ``forward`` (export, tests).
- ``latent_layer``: the differentiable solver, for diagnostics (λ, β, gradient sparsity).

Every ``__init__`` argument is JSON-able (sizes, solver parameters, and the estimator as a name
or a config dict), so ``save_pretrained`` writes a ``config.json`` that rebuilds the whole model;
the weights and the adaptive estimator state (buffers) go to ``model.safetensors``. Loading is
strict: a checkpoint with missing or unexpected tensors is an error, not a silent partial load.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import torch
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from torch import Tensor, nn

from ..estimators import DifferentiableSolver, Estimator, build_estimator

PAPER_URL = "https://arxiv.org/abs/2209.04862"

M = TypeVar("M", bound="ZooModel")


class ModelInputError(ValueError):
    """A zoo model was given an input of the wrong type, rank, shape, dtype or value range."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's tensors do not match the model built from its config."""


class ZooModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="aimle_zoo",
    license="mit",
    tags=["aimle", "implicit-mle", "discrete-latent-variables"],
    paper_url=PAPER_URL,
):
    """Base class of the model zoo (see the module docstring for the interface)."""

    #: Registry name, set by :func:`~aimle_zoo.models.register_model`.
    model_name = ""
    __jit_unused_properties__: ClassVar[list[str]] = ["samples"]

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """The training objective on one batch and a few floats to log."""
        raise NotImplementedError  # pragma: no cover - abstract

    def evaluate_batch(self, batch: Any) -> dict[str, Tensor]:
        """Per-batch metric sums and counts, computed in eval mode with the MAP latent."""
        raise NotImplementedError  # pragma: no cover - abstract

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """A deterministic tuple of valid inputs for ``forward``."""
        raise NotImplementedError  # pragma: no cover - abstract

    # ------------------------------------------------------------------------- latent layer

    def _build_latent_layer(
        self,
        solver: str,
        estimator: str | dict[str, Any] | None,
        default_estimator: Callable[[], Estimator],
        **solver_params: Any,
    ) -> DifferentiableSolver:
        """The differentiable solver; records the full estimator config in ``config.json``.

        ``estimator`` is a registered estimator name, a config dict (``Estimator.config()``) or
        ``None`` for the model's recipe default. The resolved config replaces the argument in
        the saved config, so a checkpoint never depends on default values that may change.
        """
        if estimator is None:
            built = default_estimator()
        elif isinstance(estimator, (str, dict)):
            built = build_estimator(estimator)
        else:
            raise TypeError(
                f"{type(self).__name__}: estimator must be a name such as 'aimle' or a config "
                f"dict, got {type(estimator).__name__}; pass estimator.config() to use a built "
                "estimator (the model config must stay JSON-able for save_pretrained)"
            )
        config = getattr(self, "_hub_mixin_config", None)
        if isinstance(config, dict):
            config["estimator"] = built.config()
        return DifferentiableSolver(solver, built, **solver_params)

    @property
    def samples(self) -> int:
        """Latent samples per instance: ``N`` in training mode, 1 in eval mode."""
        return cast(DifferentiableSolver, self.latent_layer).samples

    # ------------------------------------------------------------------------- evaluation

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode and no autograd for the duration of the block (the mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    @staticmethod
    def reduce_metrics(batches: Sequence[Mapping[str, Tensor]]) -> dict[str, float]:
        """Dataset-level metrics from per-batch outputs of :meth:`evaluate_batch`.

        Each ``<metric>_sum`` is added up over the batches and divided by the total of
        ``<metric>_count`` if present, else of ``count``; the result is named ``<metric>``.
        The total ``count`` is reported as well.
        """
        totals: dict[str, float] = {}
        for batch in batches:
            for key, value in batch.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach().double().sum())
        metrics: dict[str, float] = {}
        for key, total in totals.items():
            if not key.endswith("_sum"):
                continue
            name = key[: -len("_sum")]
            count = totals.get(f"{name}_count", totals.get("count", 0.0))
            metrics[name] = total / count if count > 0 else float("nan")
        if "count" in totals:
            metrics["count"] = totals["count"]
        return metrics

    # ------------------------------------------------------------------------- loading

    @classmethod
    def _from_pretrained(
        cls: type[M],
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> M:
        """Build the model from its config and load the weights, strictly by default.

        ``model_id`` is a local folder written by ``save_pretrained`` or a Hub repository id.

        Raises:
            CheckpointMismatchError: the checkpoint has missing or unexpected tensors, or
                tensors of the wrong shape (``strict=False`` tolerates missing/unexpected ones).
        """
        from safetensors.torch import load_model

        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
        else:
            model_file = hf_hub_download(
                repo_id=model_id,
                filename=constants.SAFETENSORS_SINGLE_FILE,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        where = f"{cls.__name__} checkpoint {model_file}"
        try:
            missing, unexpected = load_model(model, model_file, strict=False, device=map_location)
        except RuntimeError as err:  # size mismatches raise even with strict=False
            raise CheckpointMismatchError(
                f"{where} does not fit the model built from its config: {err}. Check that "
                "config.json and model.safetensors come from the same save_pretrained call "
                "and that no size argument was overridden"
            ) from err
        if strict and (missing or unexpected):
            raise CheckpointMismatchError(
                f"{where} does not match the model built from its config: "
                f"missing tensors {sorted(missing)}, unexpected tensors {sorted(unexpected)}. "
                "Re-save the model with save_pretrained, or pass strict=False to load the "
                "matching tensors only"
            )
        model.eval()
        return model


# ----------------------------------------------------------------------------- input checks

_DTYPE_KINDS = {"float": "a floating-point", "int": "an integer", "any": "a"}


def check_tensor(
    model: str,
    name: str,
    value: object,
    *,
    shape: str,
    ndim: int | tuple[int, ...],
    dtype: str = "float",
    sizes: Mapping[int, int] | None = None,
) -> Tensor:
    """Validate one model input; raise :class:`ModelInputError` naming what was expected.

    Args:
        model: the model (and method) for the message, e.g. ``"L2XText.forward"``.
        name: what the tensor is, e.g. ``"token ids"``.
        value: the object to check.
        shape: the expected shape in words, e.g. ``"[B, L]"``.
        ndim: the allowed rank(s).
        dtype: ``"float"``, ``"int"`` or ``"any"``.
        sizes: required sizes of some dimensions, ``{dim: size}`` (negative dims allowed).
    """
    expected = f"{model}: expected {name} as {_DTYPE_KINDS[dtype]} tensor of shape {shape}"
    if not isinstance(value, Tensor):
        raise ModelInputError(f"{expected}, got {type(value).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if value.dim() not in ranks:
        raise ModelInputError(
            f"{expected}, got a {value.dim()}-D tensor of shape {tuple(value.shape)}"
        )
    if dtype == "float" and not value.is_floating_point():
        raise ModelInputError(f"{expected}, got dtype {value.dtype}; convert it with .float()")
    if dtype == "int" and (
        value.is_floating_point() or value.is_complex() or value.dtype == torch.bool
    ):
        raise ModelInputError(f"{expected}, got dtype {value.dtype}; convert it with .long()")
    for dim, size in (sizes or {}).items():
        if value.shape[dim] != size:
            raise ModelInputError(
                f"{expected} (dimension {dim} of size {size}), got shape {tuple(value.shape)}"
            )
    return value


def unpack_batch(model: str, batch: Any, names: Sequence[str], required: int) -> list[Any]:
    """The fields of a batch given as a tuple/list (in ``names`` order) or a mapping.

    The first ``required`` names must be present; later ones are optional (``None`` if absent).
    """
    optional = [f"[{key}]" for key in names[required:]]
    layout = "(" + ", ".join([*names[:required], *optional]) + ")"
    if isinstance(batch, Mapping):
        missing = [key for key in names[:required] if key not in batch]
        if missing:
            raise ModelInputError(
                f"{model}: batch mapping lacks {missing}; expected the keys {layout}"
            )
        return [batch.get(key) for key in names]
    if isinstance(batch, Tensor) or not isinstance(batch, Sequence):
        raise ModelInputError(
            f"{model}: expected a batch tuple {layout}, got {type(batch).__name__}"
        )
    if not required <= len(batch) <= len(names):
        raise ModelInputError(
            f"{model}: expected a batch tuple {layout}, got a {type(batch).__name__} of "
            f"{len(batch)} items"
        )
    return [*batch, *([None] * (len(names) - len(batch)))]


def validating() -> bool:
    """Whether data-dependent input checks may run (not while tracing or exporting)."""
    return not (torch.jit.is_tracing() or torch.compiler.is_exporting())


def init_xavier_relu(module: nn.Module) -> None:
    """Xavier-uniform weights with the ReLU gain and zero biases for every Linear/Conv layer."""
    gain = nn.init.calculate_gain("relu")
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear`` layers between consecutive ``sizes`` with ReLU between them (none at the end)."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        if index:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def example_generator(seed: int = 0) -> torch.Generator:
    """A CPU generator for deterministic example inputs."""
    return torch.Generator().manual_seed(seed)
