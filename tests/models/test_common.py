"""The interface every zoo model shares, checked on every registered model."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import aimle_zoo
from aimle_zoo.estimators import RelaxationError, list_estimators
from aimle_zoo.hub import CheckpointConfigError
from aimle_zoo.models import (
    CheckpointMismatchError,
    ModelInputError,
    ZooModel,
    create_model,
    list_models,
)
from aimle_zoo.models._base import check_tensor

from ._helpers import TINY, make_batch, tiny_model

MODELS = list_models()

#: Trailing output shape of each tiny model (after the batch dimension).
OUTPUT_SHAPES = {
    "l2x_text": (),
    "l2x_tabular": (2,),
    "l2x_mnist": (2,),
    "discrete_vae": (16,),
    "nri_tree": (12,),
    "grid_shortest_path": (4, 4),
}


def _train_steps(model: ZooModel, batch: tuple[torch.Tensor, ...], steps: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _eval_loss(model: ZooModel, batch: tuple[torch.Tensor, ...]) -> float:
    return model.reduce_metrics([model.evaluate_batch(batch)])["loss"]


def test_every_model_has_a_tiny_configuration() -> None:
    assert set(MODELS) == set(TINY) == set(OUTPUT_SHAPES)


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_in_train_and_eval_mode(name: str) -> None:
    model = tiny_model(name, estimator={"name": "aimle", "samples": 3})
    (inputs,) = model.example_inputs(5)
    model.eval()
    first, second = model(inputs), model(inputs)
    assert first.shape == (5, *OUTPUT_SHAPES[name])
    assert torch.equal(first, second)  # eval mode: the noise-free MAP latent
    assert model.samples == 1
    model.train()
    assert model.samples == 3
    assert model(inputs).shape == (15, *OUTPUT_SHAPES[name])


@pytest.mark.parametrize("name", MODELS)
def test_example_inputs_are_deterministic(name: str) -> None:
    model = tiny_model(name)
    for first, second in zip(model.example_inputs(2), model.example_inputs(2), strict=True):
        assert torch.equal(first, second)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", MODELS)
def test_eval_path_compiles_with_torchscript(name: str) -> None:
    model = tiny_model(name).eval()
    scripted = torch.jit.script(model)
    for batch_size in (1, 4):
        inputs = model.example_inputs(batch_size)
        with torch.no_grad():
            assert torch.equal(scripted(*inputs), model(*inputs))


@pytest.mark.parametrize("name", MODELS)
def test_a_few_training_steps_reduce_the_loss(name: str) -> None:
    model = tiny_model(name)
    batch = make_batch(name, model, 16)
    before = _eval_loss(model, batch)
    _train_steps(model, batch, steps=25, lr=1e-2)
    after = _eval_loss(model, batch)
    assert after < before


#: Shortest paths have no continuous relaxation, so the "relaxed" estimator skips that model.
WITHOUT_RELAXATION = {"grid_shortest_path"}
#: Top-k and the spanning trees have an exact sampler and marginals (the "simple" estimator).
WITH_EXACT_DISTRIBUTION = {"discrete_vae", "l2x_mnist", "l2x_tabular", "l2x_text", "nri_tree"}


@pytest.mark.parametrize(
    ("name", "estimator"),
    [
        (name, estimator)
        for name in MODELS
        for estimator in list_estimators()
        if (estimator != "relaxed" or name not in WITHOUT_RELAXATION)
        and (estimator != "simple" or name in WITH_EXACT_DISTRIBUTION)
    ],
)
def test_every_estimator_trains_every_model(name: str, estimator: str) -> None:
    model = tiny_model(name, estimator=estimator)
    model.train()
    loss, logs = model.training_loss(make_batch(name, model, 4))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(isinstance(value, float) for value in logs.values())
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
    assert model.latent_layer.estimator.config()["name"] == estimator


@pytest.mark.parametrize("name", sorted(WITHOUT_RELAXATION))
def test_a_model_without_a_relaxation_refuses_the_relaxed_estimator(name: str) -> None:
    with pytest.raises(RelaxationError, match=r"has no continuous relaxation.*relax\(theta"):
        tiny_model(name, estimator="relaxed")


@pytest.mark.parametrize("name", sorted(set(MODELS) - WITH_EXACT_DISTRIBUTION))
def test_a_model_without_an_exact_sampler_refuses_the_simple_estimator(name: str) -> None:
    with pytest.raises(RelaxationError, match=r"has no exact sample and marginals"):
        tiny_model(name, estimator="simple")


@pytest.mark.parametrize("name", sorted(WITH_EXACT_DISTRIBUTION))
def test_a_simple_model_saves_and_loads_its_estimator(name: str, tmp_path: Path) -> None:
    model = tiny_model(name, estimator={"name": "simple", "temperature": 0.5, "samples": 2})
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.latent_layer.estimator.config() == {
        "name": "simple",
        "temperature": 0.5,
        "samples": 2,
    }


@pytest.mark.parametrize("name", sorted(set(MODELS) - WITHOUT_RELAXATION))
def test_a_relaxed_model_saves_and_loads_its_estimator(name: str, tmp_path: Path) -> None:
    model = tiny_model(name, estimator={"name": "relaxed", "temperature": 0.3, "hard": True})
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.latent_layer.estimator.config() == {
        "name": "relaxed",
        "noise": {"name": "gumbel", "loc": 0.0, "scale": 1.0},
        "temperature": 0.3,
        "samples": 1,
        "hard": True,
    }


@pytest.mark.parametrize("name", MODELS)
def test_straight_through_gradient_reaches_the_network_before_the_latent(name: str) -> None:
    model = tiny_model(name, estimator="ste")
    model.train()
    loss, _ = model.training_loss(make_batch(name, model, 4))
    loss.backward()
    upstream = {
        "l2x_text": "selector",
        "l2x_tabular": "selector",
        "l2x_mnist": "selector",
        "discrete_vae": "encoder",
        "nri_tree": "encoder",
        "grid_shortest_path": "features",
    }
    norms = [p.grad.norm() for p in getattr(model, upstream[name]).parameters()]
    assert sum(norms) > 0


@pytest.mark.parametrize("name", MODELS)
def test_training_loss_in_eval_mode_warns_that_theta_gets_no_gradient(name: str) -> None:
    """In eval mode the latent is the MAP solution: the loss's backward pass leaves the
    layers computing θ without a solver gradient, which the warning says."""
    model = tiny_model(name, estimator="ste")
    batch = make_batch(name, model, 4)
    model.eval()
    with pytest.warns(UserWarning, match=r"training_loss was called in eval mode.*model\.train"):
        model.training_loss(batch)
    # evaluation without gradients is a legitimate use
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        model.training_loss(batch)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.training_loss(batch)


@pytest.mark.parametrize("name", MODELS)
def test_save_and_load_round_trip(name: str, tmp_path: Path) -> None:
    model = tiny_model(name)
    initial_beta = float(model.latent_layer.estimator.beta)
    _train_steps(model, make_batch(name, model, 4), steps=2, lr=1e-3)
    model.eval()
    assert float(model.latent_layer.estimator.beta) != initial_beta  # the state moved
    model.save_pretrained(tmp_path)

    loaded = type(model).from_pretrained(tmp_path)
    assert not loaded.training
    with open(tmp_path / "config.json") as handle:
        saved_config = json.load(handle)
    assert saved_config == {**TINY[name], **saved_config}  # the sizes we passed
    assert saved_config["estimator"] == model.latent_layer.estimator.config()
    assert loaded.latent_layer.estimator.config() == model.latent_layer.estimator.config()
    assert torch.equal(loaded.latent_layer.estimator.beta, model.latent_layer.estimator.beta)
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key, value in original_state.items():
        assert torch.equal(value, loaded_state[key]), key
    inputs = model.example_inputs(3)
    with torch.no_grad():
        assert torch.equal(model(*inputs), loaded(*inputs))


@pytest.mark.parametrize("name", MODELS)
def test_loading_is_strict(name: str, tmp_path: Path) -> None:
    model = tiny_model(name)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    first_key = sorted(state)[0]

    missing = dict(state)
    del missing[first_key]
    save_file(missing, weights)
    with pytest.raises(CheckpointMismatchError, match=f"missing tensors.*{first_key}"):
        type(model).from_pretrained(tmp_path)
    partial = type(model).from_pretrained(tmp_path, strict=False)
    assert isinstance(partial, type(model))

    save_file({**state, "stray.weight": torch.zeros(2)}, weights)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensors.*stray\.weight"):
        type(model).from_pretrained(tmp_path)


def test_loading_tensors_of_the_wrong_size_fails(tmp_path: Path) -> None:
    model = tiny_model("l2x_tabular")
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="does not fit"):
        type(model).from_pretrained(tmp_path, predictor_hidden=[32])


def _bad_input(model: ZooModel, kind: str) -> object:
    (inputs,) = model.example_inputs(2)
    if kind == "not a tensor":
        return inputs.tolist()
    if kind == "wrong rank":
        return inputs.unsqueeze(0).unsqueeze(0)
    return inputs.float() if not inputs.is_floating_point() else inputs.long()


@pytest.mark.parametrize("kind", ["not a tensor", "wrong rank", "wrong dtype"])
@pytest.mark.parametrize("name", MODELS)
def test_bad_forward_inputs_name_the_model_and_the_expected_shape(name: str, kind: str) -> None:
    model = tiny_model(name)
    with pytest.raises(ModelInputError, match=rf"{type(model).__name__}\.forward: expected.*\[B"):
        model(_bad_input(model, kind))


@pytest.mark.parametrize("name", MODELS)
def test_bad_batches_are_rejected(name: str) -> None:
    model = tiny_model(name)
    batch = make_batch(name, model, 3)
    where = f"{type(model).__name__}.training_loss"
    with pytest.raises(ModelInputError, match=where):
        model.training_loss({"unexpected": batch[0]})
    with pytest.raises(ModelInputError, match=where):
        model.training_loss((*batch, batch[0], batch[0]))  # too many fields
    if len(batch) > 1 and name != "nri_tree":  # the NRI training loss needs no edges
        with pytest.raises(ModelInputError, match=where):
            model.training_loss((batch[0], batch[1][:1], *batch[2:]))  # 1 target, 3 inputs
    with pytest.raises(ModelInputError, match=f"{type(model).__name__}.evaluate_batch"):
        model.evaluate_batch((_bad_input(model, "wrong rank"), *batch[1:]))


def test_reduce_metrics_divides_sums_by_their_counts() -> None:
    batches = [
        {
            "loss_sum": torch.tensor(3.0),
            "rank_sum": torch.tensor(4.0),
            "rank_count": torch.tensor(2),
            "count": torch.tensor(2),
        },
        {
            "loss_sum": torch.tensor(6.0),
            "rank_sum": torch.tensor(2.0),
            "rank_count": torch.tensor(1),
            "count": torch.tensor(4),
        },
    ]
    metrics = ZooModel.reduce_metrics(batches)
    assert metrics == {"loss": 9.0 / 6, "rank": 6.0 / 3, "count": 6.0}


def test_evaluate_batch_restores_the_training_mode() -> None:
    model = tiny_model("l2x_tabular")
    model.train()
    model.evaluate_batch(make_batch("l2x_tabular", model, 3))
    assert model.training
    model.eval()
    model.evaluate_batch(make_batch("l2x_tabular", model, 3))
    assert not model.training


def test_loading_a_hub_repository_from_the_local_cache(tmp_path: Path) -> None:
    model = tiny_model("l2x_tabular")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repository = tmp_path / "models--aimle-zoo--l2x-tabular"
    snapshot = repository / "snapshots" / commit
    model.save_pretrained(snapshot)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    loaded = type(model).from_pretrained(
        "aimle-zoo/l2x-tabular", cache_dir=tmp_path, local_files_only=True
    )
    (inputs,) = model.example_inputs(4)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))


@pytest.mark.parametrize("name", MODELS)
def test_an_empty_batch_is_refused_by_every_model_alike(name: str) -> None:
    model = tiny_model(name)
    (inputs,) = model.example_inputs(2)
    for mode in (model.train, model.eval):
        mode()
        with pytest.raises(ModelInputError, match="got a batch of 0"):
            model(inputs[:0])
    model.train()
    with pytest.raises(ModelInputError, match="got a batch of 0"):
        model.training_loss(tuple(field[:0] for field in make_batch(name, model, 2)))


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"l2x_text"}))  # token ids are integers
def test_a_nan_input_is_refused_before_any_layer_runs(name: str) -> None:
    """In training mode a NaN would reach BatchNorm's running statistics (spoiling every later
    call) before any solver check saw it."""
    model = tiny_model(name).train()
    (inputs,) = model.example_inputs(3)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    spoiled = inputs.clone()
    spoiled[1].view(-1)[0] = float("nan")
    with pytest.raises(ModelInputError, match=r"NaN or inf values in instance\(s\) 1;"):
        model(spoiled)
    after = model.state_dict()
    assert all(
        torch.equal(
            after[key],
            value,
        )
        for key, value in before.items()
    )
    model.eval()
    model(inputs)  # still works


#: The estimator settings of each model's default recipe (the reference's commands; the grid
#: model's are documented as ours), for the default sizes.
_SOG = {"name": "sog", "iterations": 10}
DEFAULT_RECIPES: dict[str, dict[str, object]] = {
    "discrete_vae": dict(
        symmetric=True, samples=10, noise={**_SOG, "k": 10.0}, beta0=0.0, c=10.0, eta=1e-3
    ),
    "nri_tree": dict(
        symmetric=False, samples=1, noise={**_SOG, "k": 10.0}, beta0=0.0, c=1.0, eta=1e-3
    ),
    "grid_shortest_path": dict(
        symmetric=True, samples=1, noise={**_SOG, "k": 15.0}, beta0=1.0, c=12.0, eta=1e-3
    ),
    **{
        name: dict(symmetric=True, samples=1, noise={"name": "gumbel"}, beta0=0.0, c=1.0, eta=1e-4)
        for name in ("l2x_text", "l2x_tabular", "l2x_mnist")
    },
}


@pytest.mark.parametrize("name", MODELS)
def test_the_default_estimator_is_the_documented_recipe(name: str) -> None:
    model = create_model(name, **({"vocab_size": 50} if name == "l2x_text" else {}))
    config = model.latent_layer.estimator.config()
    recipe = DEFAULT_RECIPES[name]
    assert config["name"] == "aimle"
    assert config["symmetric"] == recipe["symmetric"]
    assert config["samples"] == recipe["samples"]
    assert config["input_temperature"] == config["target_temperature"] == 1.0
    assert config["noise"] == {**config["noise"], **recipe["noise"]}  # type: ignore[dict-item]
    target = config["target"]
    assert target["name"] == "adaptive" and target["momentum"] == 0.0
    assert (target["initial_beta"], target["target_norm"], target["update_step"]) == (
        recipe["beta0"],
        recipe["c"],
        recipe["eta"],
    )
    assert config["minimizer_noise"] == ("add" if name == "grid_shortest_path" else "negate")


@pytest.mark.parametrize("name", MODELS)
def test_evaluation_builds_no_autograd_graph(name: str) -> None:
    model = tiny_model(name).train()
    metrics = model.evaluate_batch(make_batch(name, model, 3))
    assert not any(value.requires_grad for value in metrics.values())


def test_reduce_metrics_gives_nan_for_a_metric_without_counted_rows() -> None:
    batch = {
        "rank_sum": torch.tensor(0.0),
        "rank_count": torch.tensor(0),
        "loss_sum": torch.tensor(3.0),
        "count": torch.tensor(3),
    }
    metrics = ZooModel.reduce_metrics([batch])
    assert math.isnan(metrics["rank"])
    assert metrics["loss"] == 1.0
    assert ZooModel.reduce_metrics([]) == {}


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"nri_tree", "grid_shortest_path"}))
def test_layers_start_xavier_uniform_with_the_relu_gain_and_zero_biases(name: str) -> None:
    """Every weight lies within ±gain·√(6 / (fan_in + fan_out)) and the largest reach it."""
    torch.manual_seed(0)
    model = tiny_model(name)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    scaled = []
    for layer in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(2) * math.sqrt(6 / (fan_in + fan_out))
        scaled.append(layer.weight.detach().abs().flatten() / bound)
        assert layer.bias is None or not layer.bias.any()
    largest = torch.cat(scaled).max().item()
    assert 0.95 < largest <= 1.0


@pytest.mark.parametrize("name", MODELS)
def test_example_inputs_follow_the_model_dtype_when_floating(name: str) -> None:
    model = tiny_model(name).double()
    (inputs,) = model.example_inputs(2)
    assert inputs.dtype == (torch.int64 if name == "l2x_text" else torch.float64)


def test_boolean_token_ids_are_refused() -> None:
    model = tiny_model("l2x_text")
    with pytest.raises(ModelInputError, match=r"token ids as an integer tensor.*torch\.bool"):
        model(torch.ones(2, 20, dtype=torch.bool))


def test_every_non_finite_instance_is_named() -> None:
    values = torch.zeros(8, 3)
    values[[0, 2], 1] = float("nan")
    with pytest.raises(ModelInputError, match=r"instance\(s\) 0, 2; clean"):
        check_tensor("M.f", "x", values, shape="[B, 3]", ndim=2, finite=True)
    values[:, 0] = float("inf")
    with pytest.raises(ModelInputError, match=r"instance\(s\) 0, 1, 2, 3, 4, \.\.\.; clean"):
        check_tensor("M.f", "x", values, shape="[B, 3]", ndim=2, finite=True)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_refused_evaluation_batch_leaves_the_mode_as_it_was(mode: str) -> None:
    model = tiny_model("l2x_tabular").train(mode == "train")
    x, labels, _ = make_batch("l2x_tabular", model, 3)
    with pytest.raises(ModelInputError, match="labels must lie"):
        model.evaluate_batch((x, labels + 5))
    assert all(module.training == (mode == "train") for module in model.modules())


def test_a_batch_mapping_names_every_missing_required_key() -> None:
    model = tiny_model("l2x_tabular")
    x, _, _ = make_batch("l2x_tabular", model, 2)
    with pytest.raises(ModelInputError, match=r"batch mapping lacks \['labels'\]"):
        model.training_loss({"x": x})


def test_unexpected_config_keys_from_this_version_ask_for_a_re_save(tmp_path: Path) -> None:
    """Only a checkpoint of a newer aimle-zoo is told to upgrade; one written by this version
    (a hand-edited config) is told to re-save."""
    model = tiny_model("l2x_tabular")
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    assert config["aimle_zoo_version"] == aimle_zoo.__version__
    config_path.write_text(json.dumps({**config, "dropout": 0.5}))
    with pytest.raises(CheckpointConfigError, match="Re-save the model") as error:
        type(model).from_pretrained(tmp_path)
    assert "upgrade" not in str(error.value)


SIZE_ARGUMENTS = [
    ("discrete_vae", "groups", "hidden_dims"),
    ("grid_shortest_path", "grid_size", "channels"),
    ("l2x_text", "filters", None),
    ("l2x_tabular", "num_classes", "selector_hidden"),
    ("l2x_mnist", "hidden_dim", "channels"),
    ("nri_tree", "encoder_hidden", None),
]


@pytest.mark.parametrize(("name", "size", "sizes"), SIZE_ARGUMENTS)
@pytest.mark.parametrize("bad", [4.0, True, 0, "4"])
def test_architecture_sizes_must_be_integers_of_at_least_one(
    name: str, size: str, sizes: str | None, bad: object
) -> None:
    """A float or bool size used to build, or fail inside torch, or fail at the first forward
    pass, with a message naming neither the argument nor the model."""
    with pytest.raises(ValueError, match=rf"{size} must be an integer >= 1, got {bad!r}"):
        tiny_model(name, **{size: bad})
    if sizes is not None:
        with pytest.raises(ValueError, match=rf"{sizes} must be a sequence of integers >= 1"):
            tiny_model(name, **{sizes: [8, bad]})
