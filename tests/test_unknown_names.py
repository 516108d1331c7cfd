"""Every registry answers an unknown name the same way: an ``UnknownNameError`` (a ``KeyError``)
naming the close matches and the known names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import aimle_zoo
from aimle_zoo.estimators import build_estimator, make_noise, make_target
from aimle_zoo.models import create_model
from aimle_zoo.recipes import get_recipe
from aimle_zoo.solvers import get_solver


@pytest.mark.parametrize(
    ("lookup", "name", "meant"),
    [
        (get_solver, "topkk", "topk"),
        (build_estimator, "aimel", "aimle"),
        (make_noise, "gumbell", "gumbel"),
        (make_target, "adaptiv", "adaptive"),
        (create_model, "discrete_vea", "discrete_vae"),
        (get_recipe, "dvae-mnst", "dvae-mnist"),
    ],
)
def test_an_unknown_name_suggests_the_one_meant(
    lookup: Callable[[str], object], name: str, meant: str
) -> None:
    with pytest.raises(aimle_zoo.UnknownNameError) as caught:
        lookup(name)
    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert message.startswith("unknown ") and f"Did you mean '{meant}'" in message


def test_noise_and_target_names_stay_value_errors_and_ignore_case() -> None:
    with pytest.raises(ValueError, match="unknown noise"):
        make_noise("pink")
    with pytest.raises(ValueError, match="unknown target"):
        make_target("moving")
    assert type(make_target("Adaptive")).__name__ == "AdaptiveTarget"
