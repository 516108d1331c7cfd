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
or a config dict), so ``save_pretrained`` writes a ``config.json`` that rebuilds the whole model,
plus the registry name (``architecture``), the checkpoint ``format_version`` and the
``aimle_zoo_version`` that wrote it; the weights and the adaptive estimator state (buffers) go to
``model.safetensors``, and ``README.md`` is the model card (solver, estimator, data, metrics, the
command that produced it). The folder is replaced atomically. Loading is strict: a config that
lacks keys, names another architecture or comes from a newer format, and a checkpoint with
corrupt, missing or unexpected tensors are errors (:class:`CheckpointError`), never a partial load.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import re
import shutil
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, PyTorchModelHubMixin, constants
from packaging.version import InvalidVersion, Version
from torch import Tensor, nn

from .._devices import resolve_device
from .._io import atomic_directory
from ..estimators import AdaptiveTarget, DifferentiableSolver, Estimator, build_estimator
from ..solvers import checks_enabled, may_hold_bad_values, solver_spec

if TYPE_CHECKING:
    from huggingface_hub.hub_mixin import DataclassInstance

PAPER_URL = "https://arxiv.org/abs/2209.04862"

#: Version of the checkpoint layout written by ``save_pretrained``; loading refuses newer ones.
FORMAT_VERSION = 1

#: Keys ``save_pretrained`` adds to ``config.json`` next to the ``__init__`` arguments.
CHECKPOINT_METADATA_KEYS = ("architecture", "format_version", "aimle_zoo_version")

#: The files of a checkpoint folder (the Hugging Face Hub layout).
CHECKPOINT_FILES = (constants.CONFIG_NAME, constants.SAFETENSORS_SINGLE_FILE, "README.md")

#: How a trained checkpoint was made (its task and smoke flag; ``aimle-zoo evaluate`` reads
#: it). Published and downloaded with the checkpoint when present, never required.
RECIPE_FILE = "recipe.json"

#: The Hub organisation of the published zoo checkpoints: ``aimle-zoo/<name>``.
HUB_ORGANIZATION = "aimle-zoo"

#: ``from_pretrained`` keywords that are load options rather than ``__init__`` arguments.
LOAD_OPTIONS = ("map_location", "strict")

#: Jinja template of the ``README.md`` card; ``generate_model_card`` supplies the values.
MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ repo_id }}

`{{ class_name }}` (architecture `{{ architecture }}`) from aimle-zoo. Its discrete latent
variable is the solution of the combinatorial solver `{{ solver }}`, made differentiable with
the `{{ estimator }}` gradient estimator ([Adaptive Implicit MLE]({{ paper_url }}) and
relatives).

## Latent solver and estimator

| | |
|---|---|
| solver | `{{ solver }}` |
| solver parameters | {{ solver_params }} |
| estimator | `{{ estimator }}` |

The full estimator configuration (noise, target, samples, temperatures) is the `estimator`
entry of `config.json`. {% if adaptive_state %}Its adaptive state is stored with the weights
in `model.safetensors`: {{ adaptive_state }}.{% else %}The estimator keeps no state between
batches.{% endif %}

## Training data

{% if dataset %}`{{ dataset }}`{% else %}Not recorded.{% endif %}

## Metrics

{% if metrics %}| metric | value |
|---|---|
{% for name, value in metrics %}| {{ name }} | {{ "%.6g" | format(value) }} |
{% endfor %}{% else %}No metrics recorded.
{% endif %}
## How it was produced

{% if command %}```bash
{{ command }}
```{% else %}Not recorded.{% endif %}

## Usage

```python
import aimle_zoo

model = aimle_zoo.from_pretrained("{{ repo_id }}")  # eval mode: noise-free MAP latent
```

Checkpoint format {{ format_version }}, written by aimle-zoo {{ aimle_zoo_version }}.
License: {{ license }}.

## Citation

```bibtex
@inproceedings{minervini2023aimle,
  title     = {Adaptive Perturbation-Based Gradient Estimation for Discrete Latent
               Variable Models},
  author    = {Minervini, Pasquale and Franceschi, Luca and Niepert, Mathias},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2023}
}

@inproceedings{niepert2021imle,
  title     = {Implicit {MLE}: Backpropagating Through Discrete Exponential Family
               Distributions},
  author    = {Niepert, Mathias and Minervini, Pasquale and Franceschi, Luca},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2021}
}
```
"""

M = TypeVar("M", bound="ZooModel")


class ModelInputError(ValueError):
    """A zoo model was given an input of the wrong type, rank, shape, dtype or value range."""


class CheckpointError(Exception):
    """A checkpoint cannot be found, read or loaded; nothing was loaded."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint folder, ``config.json`` or ``model.safetensors`` where one was expected."""


class CheckpointConfigError(CheckpointError, ValueError):
    """``config.json`` is invalid: bad JSON, missing keys, or another/unknown architecture."""


class CheckpointVersionError(CheckpointConfigError):
    """The checkpoint was written in a newer format than this aimle-zoo can read."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """``model.safetensors`` is truncated or not a safetensors file."""


class CheckpointMismatchError(CheckpointError, RuntimeError):
    """A checkpoint's tensors do not match the model built from its config."""


class ZooModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="aimle_zoo",
    license="mit",
    tags=["aimle", "implicit-mle", "discrete-latent-variables"],
    paper_url=PAPER_URL,
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """Base class of the model zoo (see the module docstring for the interface)."""

    #: Registry name, set by :func:`~aimle_zoo.models.register_model`.
    model_name = ""
    __jit_unused_properties__: ClassVar[list[str]] = ["samples"]

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """The training objective on one batch and a few floats to log."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _warn_if_eval(self) -> None:
        """Warn when ``training_loss`` runs in eval mode with gradients on: the latent layer
        then returns the MAP solution, which carries no gradient to the layers before it."""
        if not self.training and torch.is_grad_enabled():
            warnings.warn(
                f"{type(self).__name__}.training_loss was called in eval mode: the latent is "
                "the noise-free MAP solution, which passes no gradient back through the solver, "
                "so the layers that compute θ do not learn from this loss. Call model.train() "
                "before training (evaluate_batch is the eval-mode counterpart).",
                UserWarning,
                stacklevel=3,
            )

    def evaluate_batch(self, batch: Any) -> dict[str, Tensor]:
        """Per-batch metric sums and counts, computed in eval mode with the MAP latent."""
        raise NotImplementedError  # pragma: no cover - abstract

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """A deterministic tuple of valid inputs for ``forward``, on the model's device (and,
        if floating, in its parameters' dtype)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _as_input(self, value: Tensor) -> Tensor:
        """``value`` on the model's device; a floating ``value`` in the parameters' dtype."""
        parameter = next(self.parameters())
        dtype = parameter.dtype if value.is_floating_point() else value.dtype
        return value.to(device=parameter.device, dtype=dtype)

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

    # ------------------------------------------------------------------------- Hub round trip

    @classmethod
    def from_pretrained(
        cls: type[M],
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **model_kwargs: Any,
    ) -> M:
        """Load a checkpoint from a folder, a bundled name or a Hub id, strictly.

        The name is resolved to a folder by :func:`aimle_zoo.hub.resolve_checkpoint` (which
        documents the order); its ``config.json`` is checked (format version, architecture,
        keys) before anything is built; then the mixin builds the model from the config and
        :meth:`_from_pretrained` loads the weights. ``model_kwargs`` override config values or
        are the load options ``map_location`` and ``strict``. On ``ZooModel`` (or any base of
        the saved class) it builds the class the config names; on an unrelated model class it
        refuses the checkpoint. The model is returned in eval mode.

        Raises:
            CheckpointError: no such checkpoint, invalid config, another architecture, a newer
                format, corrupt or mismatched weights; nothing is loaded.
            TypeError: a keyword is neither an ``__init__`` argument nor a load option.
            ValueError: a ``revision`` was given with a local folder.
        """
        from ..hub import resolve_checkpoint  # aimle_zoo.hub imports the models package

        folder = resolve_checkpoint(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
        )
        config = read_checkpoint_config(folder)
        config_path = folder / constants.CONFIG_NAME
        model_class = cls._checkpoint_class(config, config_path)
        model_class._check_config_keys(config, config_path, model_kwargs)
        if (
            "estimator" in model_class._hub_mixin_init_parameters
            and "estimator" not in model_kwargs
        ):
            upgraded = _upgraded_estimator_config(config)
            if upgraded is not None:  # built as the version that saved it behaved
                model_kwargs = {**model_kwargs, "estimator": upgraded}
            _check_estimator_config(upgraded or config.get("estimator"), config_path)
        loaded = super(ZooModel, model_class).from_pretrained(os.fspath(folder), **model_kwargs)
        return cast(M, loaded)

    @classmethod
    def _checkpoint_class(cls, config: Mapping[str, Any], config_path: Path) -> type[ZooModel]:
        """The class to build for ``config``: its registered architecture, checked against cls."""
        from ._registry import UnknownModelError, get_model_class  # the registry imports us

        architecture = config["architecture"]
        try:
            saved_class = get_model_class(architecture)
        except UnknownModelError as err:
            raise CheckpointConfigError(
                f"{config_path} names an unknown architecture: {err} Import the package that "
                "registers it, or upgrade aimle-zoo"
            ) from err
        if issubclass(saved_class, cls):
            return saved_class
        if issubclass(cls, saved_class):
            return cls
        raise CheckpointConfigError(
            f"{config_path} holds a {saved_class.__name__} checkpoint (architecture "
            f"{architecture!r}), not a {cls.__name__}: load it with "
            f"{saved_class.__name__}.from_pretrained(...) or aimle_zoo.from_pretrained(...)"
        )

    @classmethod
    def _check_config_keys(
        cls, config: Mapping[str, Any], config_path: Path, overrides: Mapping[str, Any]
    ) -> None:
        """Every ``__init__`` argument is in the config or overridden, and no key is unknown."""
        arguments = list(cls._hub_mixin_init_parameters)[1:]  # without self
        unknown = sorted(set(overrides) - set(arguments) - set(LOAD_OPTIONS))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.from_pretrained got unknown keywords {unknown}; it accepts the "
                f"{cls.__name__} arguments {arguments} and the load options {list(LOAD_OPTIONS)}"
            )
        missing = [name for name in arguments if name not in config and name not in overrides]
        unexpected = sorted(set(config) - set(arguments) - set(CHECKPOINT_METADATA_KEYS))
        if missing or unexpected:
            advice = (
                "Re-save the model with save_pretrained, or pass missing values as keyword "
                "arguments of from_pretrained"
            )
            saved_version = str(config.get("aimle_zoo_version"))
            if unexpected and _is_newer(saved_version):
                advice = (
                    f"It was written by aimle-zoo {saved_version}, newer than this one: "
                    "upgrade aimle-zoo (pip install -U aimle-zoo)"
                )
            raise CheckpointConfigError(
                f"{config_path} does not describe a {cls.__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}. {advice}"
            )

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
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> M:
        """Build the model from its config and load the weights, strictly by default.

        ``model_id`` is the checkpoint folder: :meth:`from_pretrained` has already resolved a
        name or Hub id to one (the other Hub arguments were used then).

        Raises:
            CheckpointNotFoundError: the folder has no ``model.safetensors``.
            CheckpointConfigError: the constructor rejects the config values.
            CheckpointCorruptError: ``model.safetensors`` is truncated or not safetensors, or
                holds NaN or infinite weights (a diverged run).
            CheckpointMismatchError: the checkpoint has missing or unexpected tensors, or
                tensors of the wrong shape or dtype (``strict=False`` tolerates
                missing/unexpected ones). A checkpoint whose floating-point tensors all have
                another floating dtype (a float64 model) loads into a model of that dtype.
            ValueError: ``map_location`` is not a device, is one this machine lacks, or is
                ``"meta"`` (which holds no values).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        model_file = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
        if not os.path.isfile(model_file):
            raise CheckpointNotFoundError(
                f"{model_file} does not exist: the checkpoint folder is incomplete. Download it "
                "again (force_download=True) or re-save the model with save_pretrained"
            )
        try:
            device = resolve_device(map_location)
        except ValueError as err:
            raise ValueError(f"map_location={map_location!r}: {err}") from err
        if device.type == "meta":
            raise ValueError(
                f"map_location={map_location!r} would load no weights: load on the cpu, or "
                "build the model class under `with torch.device('meta'):` for its shapes alone"
            )
        try:
            model = cls(**model_kwargs)
        except (TypeError, ValueError, LookupError) as err:
            raise CheckpointConfigError(
                f"{os.path.join(model_id, constants.CONFIG_NAME)} (with any keyword overrides) "
                f"does not build a {cls.__name__}: {err}"
            ) from err
        where = f"{cls.__name__} checkpoint {model_file}"
        try:
            model = _match_stored_dtypes(model, model_file, where).to(device)
            target = "cpu" if device.type == "cpu" else str(device)  # safetensors: no "cpu:0"
            missing, unexpected = load_model(model, model_file, strict=False, device=target)
        except SafetensorError as err:
            raise CheckpointCorruptError(
                f"{model_file} is not a readable safetensors file ({err}): it is truncated or "
                "corrupt. Download it again (force_download=True) or re-save the model"
            ) from err
        except CheckpointError:  # already says what is wrong (a tensor of another dtype)
            raise
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
        _check_finite(model, where)
        model.eval()
        return model

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        metrics: Mapping[str, float] | None = None,
        command: str | None = None,
        dataset: str | None = None,
        config: dict[str, Any] | DataclassInstance | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write ``config.json``, ``model.safetensors`` and the ``README.md`` card atomically.

        The files are written to a staging folder beside ``save_directory`` that then replaces
        it as a whole, so a failed save leaves the previous checkpoint intact. Other files
        already in the folder (e.g. a trainer state) are carried over, unless the folder held a
        checkpoint of another architecture (they described that model).

        Args:
            save_directory: the checkpoint folder.
            metrics: dataset-level metrics for the card, name -> number (e.g. the output of
                :meth:`reduce_metrics`); also written to the card's ``model-index``.
            command: the exact command that produced the checkpoint.
            dataset: the dataset it was trained and evaluated on (a Hub dataset id or a name).
            config: the ``__init__`` arguments to record (default: the model's own).
            repo_id: the Hub id the card shows (default :func:`default_repo_id` of the folder)
                and, with ``push_to_hub=True``, where to push.
            push_to_hub: push the saved model with the mixin's ``push_to_hub`` afterwards.
            model_card_kwargs: more values for :data:`MODEL_CARD_TEMPLATE`.
            **push_to_hub_kwargs: passed to ``push_to_hub``.

        Returns:
            The commit URL with ``push_to_hub=True``, else ``None``.

        Raises:
            TypeError: the model is not registered, or a card value has the wrong type.
            ValueError: the folder cannot be replaced (it holds the working directory), or
                ``push_to_hub=True`` without ``repo_id``.
            PermissionError: the folder is read-only.
        """
        if not self.model_name:
            raise TypeError(
                f"{type(self).__name__} is not a registered model: decorate it with "
                "@register_model(name) so that its checkpoints name their architecture"
            )
        if push_to_hub and repo_id is None:
            raise ValueError("save_pretrained(push_to_hub=True) needs the Hub repo_id to push to")
        target = Path(save_directory).expanduser().resolve()
        _check_replaceable(target)
        card_kwargs = dict(model_card_kwargs or {})
        card_kwargs["repo_id"] = (
            repo_id or card_kwargs.get("repo_id") or default_repo_id(target, self.model_name)
        )
        for key, value in (("metrics", metrics), ("command", command), ("dataset", dataset)):
            if value is not None:
                card_kwargs[key] = value
        with atomic_directory(target) as staging:
            super().save_pretrained(
                staging, config=self._checkpoint_config(config), model_card_kwargs=card_kwargs
            )
            if target.is_dir() and _same_architecture(target, self.model_name):
                _carry_over(target, staging)
            _set_modes(staging, previous=target)
        if push_to_hub:
            return self.push_to_hub(
                repo_id=card_kwargs["repo_id"],
                config=config,
                model_card_kwargs=card_kwargs,
                **push_to_hub_kwargs,
            )
        return None

    def _checkpoint_config(
        self, config: dict[str, Any] | DataclassInstance | None
    ) -> dict[str, Any]:
        """``config.json``: the ``__init__`` arguments plus :data:`CHECKPOINT_METADATA_KEYS`."""
        from .. import __version__

        recorded = self._hub_mixin_config if config is None else config
        if is_dataclass(recorded) and not isinstance(recorded, type):
            recorded = asdict(recorded)
        if recorded is not None and not isinstance(recorded, Mapping):
            raise TypeError(
                f"{type(self).__name__}: the config to save must be a dict of __init__ "
                f"arguments, got {type(recorded).__name__}"
            )
        return {
            **(recorded or {}),
            "architecture": self.model_name,
            "format_version": FORMAT_VERSION,
            "aimle_zoo_version": __version__,
        }

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The ``README.md`` model card, rendered from :data:`MODEL_CARD_TEMPLATE`.

        Keyword arguments: ``repo_id`` (the Hub id the card shows), ``metrics`` (name ->
        number, also written to the front matter as ``model-index``), ``command`` and
        ``dataset`` (strings: a Hub dataset id or a description), ``dataset_id`` (the Hub
        dataset id when ``dataset`` describes it), ``written_by`` (the aimle-zoo version that
        wrote the checkpoint, default this one); any others are passed to the template.
        The front matter's ``datasets`` lists Hub dataset ids only: ``dataset_id``, or
        ``dataset`` when it is an id (no spaces).
        """
        from .. import __version__

        architecture = self.model_name
        repo_id = kwargs.pop("repo_id", None) or default_repo_id("", architecture)
        metrics = _metric_rows(kwargs.pop("metrics", None) or {})
        command, dataset = kwargs.pop("command", None), kwargs.pop("dataset", None)
        dataset_id, written_by = kwargs.pop("dataset_id", None), kwargs.pop("written_by", None)
        for key, value in (
            ("command", command),
            ("dataset", dataset),
            ("dataset_id", dataset_id),
            ("written_by", written_by),
        ):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"model card {key} must be a string, got {type(value).__name__}")
        if dataset_id is None and dataset and not any(char.isspace() for char in dataset):
            dataset_id = dataset
        layer = cast(DifferentiableSolver, self.latent_layer)
        spec = solver_spec(layer.solver)
        solver = spec.name if spec is not None else type(layer.solver).__name__
        solver_params = getattr(layer.solver, "params", None) or {}
        params_text = ", ".join(f"`{key}={value!r}`" for key, value in solver_params.items())
        estimator = layer.estimator.config()["name"]
        if isinstance(getattr(layer.estimator, "target", None), AdaptiveTarget):
            adaptive_state = (
                "β, the running average of non-zero\ngradient entries per sample and the last "
                "update of β (λ is derived from them per batch)"
            )
        else:
            adaptive_state = ", ".join(f"`{key}`" for key in layer.estimator.state_dict())

        info = self._hub_mixin_info
        card_data = ModelCardData(**info.model_card_data.to_dict())
        card_data.tags = sorted({*(card_data.tags or []), architecture, solver, estimator})
        if dataset_id:
            card_data.datasets = [dataset_id]
        if metrics:
            card_data.model_name = repo_id
            card_data.eval_results = [
                EvalResult(
                    task_type="other",
                    dataset_type=dataset_id or _slug(dataset or "unspecified"),
                    dataset_name=dataset or dataset_id or "unspecified",
                    metric_type=name,
                    metric_name=name,
                    metric_value=value,
                )
                for name, value in metrics
            ]
        values = {
            "repo_id": repo_id,
            "class_name": type(self).__name__,
            "architecture": architecture,
            "solver": solver,
            "solver_params": params_text or "none",
            "estimator": estimator,
            "adaptive_state": adaptive_state,
            "dataset": dataset,
            "metrics": metrics,
            "command": command,
            "paper_url": info.paper_url,
            "license": card_data.license,
            "format_version": FORMAT_VERSION,
            "aimle_zoo_version": written_by or __version__,
        }
        return ModelCard.from_template(
            card_data, template_str=info.model_card_template, **{**kwargs, **values}
        )


#: What to do about an invalid estimator config when loading a checkpoint.
_LOAD_ADVICE = (
    "restore it (re-save the model with save_pretrained), or pass estimator=... to from_pretrained"
)


def read_checkpoint_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder, with its metadata keys checked.

    Raises:
        CheckpointNotFoundError: the folder has no ``config.json``.
        CheckpointConfigError: the file is not a JSON object, or ``architecture``,
            ``format_version`` or ``aimle_zoo_version`` is missing or invalid.
        CheckpointVersionError: ``format_version`` is newer than :data:`FORMAT_VERSION`.
    """
    from .. import __version__

    path = Path(folder) / constants.CONFIG_NAME
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path} does not exist: {folder} is not a checkpoint folder written by "
            "save_pretrained (config.json, model.safetensors, README.md)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointConfigError(
            f"{path} is not valid JSON ({err}); restore the file or re-save the model with "
            "save_pretrained"
        ) from err
    if not isinstance(config, dict):
        raise CheckpointConfigError(
            f"{path} must hold a JSON object of model arguments, got {type(config).__name__}"
        )
    missing = [key for key in CHECKPOINT_METADATA_KEYS if key not in config]
    if missing:
        raise CheckpointConfigError(
            f"{path} lacks the keys {missing}, so it was not written by aimle-zoo's "
            "save_pretrained: rebuild the model with its arguments, load the weights and save "
            "it again with save_pretrained"
        )
    version, architecture = config["format_version"], config["architecture"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointConfigError(
            f"{path}: format_version must be a positive integer, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{path} has checkpoint format {version} (written by aimle-zoo "
            f"{config['aimle_zoo_version']}), but aimle-zoo {__version__} reads formats up to "
            f"{FORMAT_VERSION}: upgrade aimle-zoo (pip install -U aimle-zoo)"
        )
    if not isinstance(architecture, str) or not architecture:
        raise CheckpointConfigError(
            f"{path}: architecture must be a registered model name, got {architecture!r}"
        )
    if not isinstance(config["aimle_zoo_version"], str) or not config["aimle_zoo_version"]:
        raise CheckpointConfigError(
            f"{path}: aimle_zoo_version must be the version string of the aimle-zoo that wrote "
            f"it, got {config['aimle_zoo_version']!r}"
        )
    return config


def saved_estimator_config(
    folder: str | os.PathLike[str], *, advice: str = _LOAD_ADVICE
) -> dict[str, Any]:
    """The full estimator config a checkpoint folder was saved with, with the keys added since
    its version set to the values that reproduce it (as :meth:`from_pretrained` builds it).
    ``advice`` ends the message of an invalid estimator config (what to do about it).

    Raises:
        CheckpointNotFoundError: the folder has no ``config.json``.
        CheckpointVersionError: the folder was written in a newer checkpoint format.
        CheckpointConfigError: the config is invalid or its estimator config incomplete.
    """
    config = read_checkpoint_config(folder)
    saved = _upgraded_estimator_config(config) or config.get("estimator")
    _check_estimator_config(saved, Path(folder) / constants.CONFIG_NAME, advice)
    return dict(cast(dict[str, Any], saved))


def _check_estimator_config(saved: object, config_path: Path, advice: str = _LOAD_ADVICE) -> None:
    """The saved estimator config is a complete ``Estimator.config()`` dict.

    Checkpoints record the resolved estimator config in full, so loading never depends on
    defaults; a ``null`` or a dict missing keys (hand-edited, or cut) is refused, the message
    ending with ``advice``.
    """
    if not isinstance(saved, dict):
        raise CheckpointConfigError(
            f"{config_path}: estimator must be the estimator's full config dict (as "
            f"Estimator.config() gives it), got {saved!r}; {advice}"
        )
    try:
        complete = build_estimator(saved).config()
    except (TypeError, ValueError, LookupError) as err:
        raise CheckpointConfigError(
            f"{config_path}: the estimator config does not build an estimator: {err}; {advice}"
        ) from err
    missing = _missing_keys(complete, saved)
    if missing:
        raise CheckpointConfigError(
            f"{config_path}: the estimator config lacks {missing}, so loading would fall back "
            f"to defaults; {advice}"
        )


#: Estimator config keys added after the first release: name -> (the version that added it,
#: the value that reproduces older versions, the estimators that take it).
_ADDED_ESTIMATOR_KEYS = {
    "minimizer_noise": ("0.2.0", "add", ("aimle", "imle", "ste")),
    "perturbation": ("0.3.0", "additive", ("perturbed",)),
}


def _upgraded_estimator_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The saved estimator config with the keys added since its version, set to the values
    that reproduce that version (``None`` if nothing is added)."""
    saved = config.get("estimator")
    saved_version = _parse_version(config.get("aimle_zoo_version"))
    if not isinstance(saved, dict) or saved_version is None:
        return None
    added = {
        key: old_value
        for key, (version, old_value, estimators) in _ADDED_ESTIMATOR_KEYS.items()
        if saved_version < Version(version) and key not in saved and saved.get("name") in estimators
    }
    return {**saved, **added} if added else None


def _missing_keys(
    complete: Mapping[str, Any], given: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    """Dotted paths of the keys of ``complete`` (recursively) that ``given`` lacks."""
    missing = []
    for key, value in complete.items():
        if key not in given:
            missing.append(f"{prefix}{key}")
        elif isinstance(value, Mapping) and isinstance(given[key], Mapping):
            missing += _missing_keys(value, given[key], f"{prefix}{key}.")
    return missing


def _parse_version(text: object) -> Version | None:
    """``text`` as a version, or ``None`` if it is not one."""
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


def _is_newer(version: str) -> bool:
    """Whether aimle-zoo ``version`` is newer than the running one (``False`` if unparsable)."""
    from .. import __version__

    parsed = _parse_version(version)
    return parsed is not None and parsed > Version(__version__)


def _match_stored_dtypes(model: M, model_file: str, where: str) -> M:
    """``model`` in the floating dtype of the checkpoint's tensors, or an error naming the
    tensors whose dtype differs from the model's (no silent casts)."""
    from safetensors import safe_open

    with safe_open(model_file, framework="pt") as handle:
        names = handle.keys()  # the handle is not iterable
        codes = {name: handle.get_slice(name).get_dtype() for name in names}
    expected = {name: _SAFETENSORS_DTYPES.get(code) for name, code in codes.items()}

    def differing() -> dict[str, tuple[torch.dtype | None, torch.dtype]]:
        state = model.state_dict()
        return {
            name: (dtype, state[name].dtype)
            for name, dtype in expected.items()
            if name in state and dtype != state[name].dtype
        }

    wrong = differing()
    # the one floating dtype of the tensors that differ (a half-precision model keeps its
    # adaptive estimator state in float32, which then already matches)
    stored_floats = {
        in_file
        for in_file, _ in wrong.values()
        if in_file is not None and in_file.is_floating_point
    }
    if (
        wrong
        and len(stored_floats) == 1
        and all(
            in_file is not None and in_file.is_floating_point and own.is_floating_point
            for in_file, own in wrong.values()
        )
    ):
        model = model.to(stored_floats.pop())  # e.g. a model saved after .double()
        wrong = differing()
    if wrong:
        shown = ", ".join(
            f"{name} ({in_file} in the file, {own} in the model)"
            for name, (in_file, own) in sorted(wrong.items())[:5]
        )
        raise CheckpointMismatchError(
            f"{where} holds tensors of another dtype than the model built from its config: "
            f"{shown}{', ...' if len(wrong) > 5 else ''}. Re-save the model with save_pretrained"
        )
    return model


def _check_finite(model: nn.Module, where: str) -> None:
    """Raise :class:`CheckpointCorruptError` naming the tensors that hold NaN or ±inf."""
    bad = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointCorruptError(
            f"{where} holds NaN or infinite values in {shown}: it was saved from a run that "
            "diverged, or the file was altered. Load an earlier checkpoint or retrain (to "
            "inspect the values, read the file with safetensors.torch.load_file)"
        )


#: safetensors dtype codes -> torch dtypes.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def default_repo_id(folder: str | os.PathLike[str], architecture: str | None = None) -> str:
    """``aimle-zoo/<folder name>``: the Hub id a checkpoint folder is published under by default.

    A run's ``best/`` or ``last/`` folder is named after its run folder (``runs/dvae/best``:
    ``aimle-zoo/dvae``). A folder name that is not a valid repository name (e.g. a hidden
    staging folder) falls back to ``aimle-zoo/<architecture>`` with hyphens for underscores,
    when ``architecture`` is given.

    Raises:
        ValueError: neither gives a valid Hub repository id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(folder).expanduser().resolve() if os.fspath(folder) else None
    if path is not None and path.name in ("best", "last"):
        path = path.parent  # a run's checkpoint: the run's name
    name = path.name if path is not None else ""
    candidates = [name, (architecture or "").replace("_", "-")]
    for candidate in filter(None, candidates):
        try:
            validate_repo_id(f"{HUB_ORGANIZATION}/{candidate}")
        except HFValidationError:
            continue
        return f"{HUB_ORGANIZATION}/{candidate}"
    raise ValueError(
        f"the folder name {name!r} is not a valid Hub repository name; give the repository id "
        f"explicitly, e.g. '{HUB_ORGANIZATION}/my-model'"
    )


def _slug(text: str) -> str:
    """``text`` as a lower-case identifier: ``"L2X on MNIST"`` -> ``"l2x-on-mnist"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > 96:
        slug = slug[:97].rsplit("-", 1)[0]  # whole words
    return slug or "unspecified"


def _metric_rows(metrics: object) -> list[tuple[str, float]]:
    """``(name, value)`` pairs of a metrics mapping, checked: non-empty names, finite numbers."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping name -> number, got {type(metrics).__name__}")
    rows = []
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"metric {name!r} must be a real number, got {value!r}; convert tensors with "
                "float()"
            )
        if not math.isfinite(value):
            raise ValueError(
                f"metric {name!r} is {value}; a model card records finite numbers (leave the "
                "metric out, or fix the evaluation that produced it)"
            )
        rows.append((name, float(value)))
    return rows


def _check_replaceable(folder: Path) -> None:
    """``save_pretrained`` replaces ``folder`` as a whole: it must be a folder, not the cwd."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"cannot save a checkpoint to {folder}: it exists and is not a folder; choose a "
            "folder path"
        )
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot save a checkpoint to {folder}: the folder is read-only; make it writable "
            f"(chmod u+w {folder}) to replace it, or save elsewhere"
        )
    working = Path.cwd().resolve()
    if folder == working or folder in working.parents:
        raise ValueError(
            f"cannot save a checkpoint to {folder}: it is or holds the working directory, which "
            "the atomic save would replace; save into a sub-folder"
        )


def _set_modes(staging: Path, previous: Path) -> None:
    """Give the staged checkpoint the permissions of an ordinary folder and its files.

    The staging folder is private (0o700) and safetensors writes 0o600 files; the folder gets
    the previous folder's mode, else that of a new folder (0o777 less the umask, read from a
    probe folder), and the checkpoint files get the same mode without execute bits.
    """
    if previous.is_dir():
        mode = stat.S_IMODE(previous.stat().st_mode)
    else:
        probe = staging / ".mode-probe"
        probe.mkdir()
        mode = stat.S_IMODE(probe.stat().st_mode)
        probe.rmdir()
    staging.chmod(mode)
    for name in CHECKPOINT_FILES:
        (staging / name).chmod(mode & 0o666)


def _same_architecture(folder: Path, architecture: str) -> bool:
    """Whether ``folder`` holds no checkpoint config, or one of ``architecture``: only then are
    its other files (a recipe, a trainer state) kept by a save over it."""
    try:
        config = json.loads((folder / constants.CONFIG_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get("architecture") == architecture


def _carry_over(previous: Path, staging: Path) -> None:
    """Hard-link (or copy) the entries of ``previous`` that the new save did not write."""
    for entry in previous.iterdir():
        destination = staging / entry.name
        if destination.exists() or destination.is_symlink():
            continue
        if entry.is_symlink():
            destination.symlink_to(os.readlink(entry))
        elif entry.is_dir():
            shutil.copytree(entry, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, destination)


def _link_or_copy(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """A hard link when the file system allows one, else a copy with metadata."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


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
    nonempty: bool = False,
    finite: bool = False,
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
        nonempty: refuse a batch of 0 (a model's main input: its outputs and metrics need one).
        finite: refuse NaN and ±inf (checked when :func:`checks_enabled`; a NaN input would
            reach a training-mode BatchNorm's running statistics before any solver check).
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
    if nonempty and value.dim() and value.shape[0] == 0:
        raise ModelInputError(f"{model}: got a batch of 0 {name}; pass at least one")
    if (
        finite
        and checks_enabled()
        and value.is_floating_point()
        and value.numel()
        and may_hold_bad_values(value.detach(), allow_inf=False)  # one reduction screens
    ):
        bad = ~torch.isfinite(value.detach()).reshape(value.shape[0], -1).all(dim=1)  # [B]
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
            raise ModelInputError(
                f"{model}: {name} contain NaN or inf values in instance(s) {shown}; clean or "
                "drop those instances"
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


def check_sizes(owner: str, **sizes: object) -> None:
    """Refuse architecture sizes that are not Python ints >= 1 (or sequences of them).

    A float or bool size would build (or not) and fail later inside torch with a message that
    names neither the argument nor the model; ``owner`` is the model's class name.
    """
    for argument, value in sizes.items():
        items: list[object] = [value]
        what = "an integer >= 1"
        if isinstance(value, Sequence) and not isinstance(value, str):
            items, what = list(value), "a sequence of integers >= 1"
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in items):
            raise ValueError(f"{owner}: {argument} must be {what}, got {value!r}")


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


def batch_total(values: Tensor) -> Tensor:
    """Σ of per-instance metric values, accumulated in float32 at least: a half-precision
    model's batch sums overflow float16 (1,500 images × 60 nats > 65504)."""
    if not values.is_floating_point():
        return values.sum()
    return values.sum(dtype=torch.promote_types(values.dtype, torch.float32))


def example_generator(seed: int = 0) -> torch.Generator:
    """A CPU generator for deterministic example inputs."""
    return torch.Generator().manual_seed(seed)
