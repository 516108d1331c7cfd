"""Every registry answers an unknown name the same way: an ``UnknownNameError`` (a ``KeyError``)
naming the close matches and the known names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import aimle_zoo
from aimle_zoo._names import did_you_mean
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


def test_did_you_mean_offers_up_to_three_close_names_or_none() -> None:
    known = ["topk", "topk_exact", "topk_sorted", "topk_batch", "dijkstra"]
    assert did_you_mean("dijkstr", known) == " Did you mean 'dijkstra'?"
    assert did_you_mean("topkk", known) == " Did you mean 'topk' or 'topk_exact' or 'topk_batch'?"
    assert did_you_mean("topkk", known, count=1) == " Did you mean 'topk'?"
    assert did_you_mean("mst", known) == ""  # nothing close: no suggestion
    assert did_you_mean("dijk", known) == " Did you mean 'dijkstra'?"  # ratio 2·4/12 ≥ 0.5
