"""The model registry: names, lookup errors, duplicates, construction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from torch import nn

from aimle_zoo.models import (
    DiscreteVAE,
    GridShortestPath,
    L2XImage,
    L2XTabular,
    L2XText,
    NRITree,
    UnknownModelError,
    ZooModel,
    _registry,
    create_model,
    get_model_class,
    list_models,
    model_registry,
    register_model,
)


@pytest.fixture
def scratch_name() -> Iterator[str]:
    name = "scratch_model_for_registry_tests"
    yield name
    _registry._models.pop(name, None)


def test_built_in_models_are_registered_under_their_names() -> None:
    expected = {
        "l2x_text": L2XText,
        "l2x_tabular": L2XTabular,
        "l2x_mnist": L2XImage,
        "discrete_vae": DiscreteVAE,
        "nri_tree": NRITree,
        "grid_shortest_path": GridShortestPath,
    }
    assert list_models() == sorted(expected)
    for name, cls in expected.items():
        assert get_model_class(name) is cls
        assert model_registry[name] is cls
        assert cls.model_name == name


def test_registry_view_is_read_only() -> None:
    with pytest.raises(TypeError):
        model_registry["x"] = L2XText  # type: ignore[index]


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(
        UnknownModelError, match=r"unknown model 'l2x_txt'.*Did you mean 'l2x_text'"
    ):
        create_model("l2x_txt")
    with pytest.raises(UnknownModelError, match="Known models: discrete_vae"):
        get_model_class("no_such_thing")


def test_duplicate_names_are_refused(scratch_name: str) -> None:
    @register_model(scratch_name)
    class First(ZooModel):
        pass

    assert get_model_class(scratch_name) is First
    with pytest.raises(ValueError, match=f"already registered under the name '{scratch_name}'"):

        @register_model(scratch_name)
        class Second(ZooModel):
            pass

    with pytest.raises(ValueError, match="already registered"):
        register_model("l2x_text")(First)
    assert get_model_class(scratch_name) is First


def test_only_zoo_models_can_be_registered(scratch_name: str) -> None:
    with pytest.raises(TypeError, match="needs a ZooModel subclass"):
        register_model(scratch_name)(nn.Linear)  # type: ignore[type-var]
    assert scratch_name not in list_models()
    with pytest.raises(ValueError, match="non-empty string"):
        register_model("")


def test_create_model_passes_arguments_and_reports_bad_ones() -> None:
    model = create_model("l2x_tabular", input_dim=6, k=2, num_classes=3)
    assert isinstance(model, L2XTabular)
    assert model.k == 2 and model.input_dim == 6
    with pytest.raises(
        TypeError, match=r"does not accept arguments \['hidden'\].*L2XTabular\(input_dim"
    ):
        create_model("l2x_tabular", hidden=3)


def test_a_model_name_that_is_not_a_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="model name must be a string, got int"):
        get_model_class(3)  # type: ignore[arg-type]
