"""Third-party solvers registered through the ``aimle_zoo.solvers`` entry-point group.

Plugins are installed the way an installer would: a ``*.dist-info`` folder with ``METADATA`` and
``entry_points.txt`` next to the module in a temporary site directory on ``sys.path``, which
``importlib.metadata`` discovers. Other tests patch ``EntryPoint`` objects in directly.
"""

from __future__ import annotations

import importlib
import itertools
import shutil
import sys
import textwrap
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from aimle_zoo.solvers import (
    ENTRY_POINT_GROUP,
    SolverInputError,
    SolverPluginError,
    UnknownSolverError,
    _registry as registry_module,
    get_solver,
    get_solver_spec,
    list_solvers,
    load_plugins,
    register_solver,
    solver_registry,
    solver_spec,
)
from aimle_zoo.solvers.testing import check_solver, isolated_registry

FIXTURES = Path(__file__).parent.parent / "fixtures"
ASSIGNMENT_DIST = "aimlezoo-assignment-plugin"
ASSIGNMENT_MODULE = "aimlezoo_assignment_plugin"


class Site:
    """A temporary site directory on ``sys.path`` that distributions are installed into."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modules: list[str] = []

    def write_module(self, module: str, source: str) -> None:
        (self.path / f"{module}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(module, None)
        importlib.invalidate_caches()
        self.modules.append(module)

    def install(self, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        """Install ``dist`` 1.0 with ``entry_points`` (name -> "module:attr") and module sources."""
        for module, source in modules.items():
            self.write_module(module, source)
        info = self.path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = [
            f"[{ENTRY_POINT_GROUP}]",
            *(f"{name} = {value}" for name, value in entry_points.items()),
        ]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")

    def install_assignment_plugin(self) -> None:
        """The scipy assignment plugin of ``tests/fixtures`` as distribution ``ASSIGNMENT_DIST``."""
        source = (FIXTURES / f"{ASSIGNMENT_MODULE}.py").read_text()
        self.install(
            ASSIGNMENT_DIST,
            {"assignment": f"{ASSIGNMENT_MODULE}:assignment"},
            {ASSIGNMENT_MODULE: source},
        )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A fresh site directory, with the registry snapshotted and its plugins not yet loaded."""
    site = Site(tmp_path / "site-packages")
    site.path.mkdir()
    monkeypatch.syspath_prepend(str(site.path))
    # no .pyc: a module rewritten within the same second must not be served from a stale cache
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    with isolated_registry():
        registry_module._plugins_loaded = False
        yield site
    for module in site.modules:
        sys.modules.pop(module, None)
    shutil.rmtree(site.path)
    importlib.invalidate_caches()


def patch_entry_points(
    monkeypatch: pytest.MonkeyPatch, *entry_points: metadata.EntryPoint
) -> list[str]:
    """Make ``importlib.metadata`` report exactly ``entry_points``; returns a log of the reads."""
    reads: list[str] = []

    def fake_entry_points(*, group: str) -> list[metadata.EntryPoint]:
        reads.append(group)
        return [entry_point for entry_point in entry_points if entry_point.group == group]

    monkeypatch.setattr(registry_module.metadata, "entry_points", fake_entry_points)
    return reads


def entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def identity_solver_module(name: str) -> str:
    return f"""
        from aimle_zoo.solvers import register_solver

        @register_solver({name!r}, description="returns its input")
        def solve(theta):
            return theta
    """


def permutation_matrices(theta: Tensor) -> Tensor:
    """Every n x n permutation matrix: ``[n, n] -> [n!, n, n]``."""
    n = theta.shape[-1]
    eye = torch.eye(n, dtype=theta.dtype)
    return torch.stack([eye[list(order)] for order in itertools.permutations(range(n))])


def register_builtin_argmax() -> None:
    @register_solver("plug_argmax", aliases=("plug_argmax_alias",))
    def argmax(theta: Tensor) -> Tensor:
        """One-hot argmax of each row."""
        return torch.nn.functional.one_hot(theta.argmax(-1), theta.shape[-1]).to(theta)


# ----------------------------------------------------------------------------- discovery


def test_installed_distribution_is_discovered_lazily(site: Site) -> None:
    site.install_assignment_plugin()
    assert "assignment" not in solver_registry  # nothing is loaded before the first query
    assert ASSIGNMENT_MODULE not in sys.modules

    solver = get_solver("assignment")
    spec = get_solver_spec("assignment")
    assert spec.source == ASSIGNMENT_DIST and not spec.exportable
    assert "assignment" in list_solvers()

    theta = torch.rand(5, 4, 4)
    z = solver(theta)
    for instance, solution in zip(theta, z, strict=True):  # brute force over the 24 permutations
        candidates = permutation_matrices(instance)
        best = candidates[(candidates * instance).sum(dim=(1, 2)).argmax()]
        torch.testing.assert_close(solution, best, rtol=0, atol=0)


def test_cpu_library_plugin_passes_the_conformance_kit(site: Site) -> None:
    site.install_assignment_plugin()
    report = check_solver("assignment", feasible=permutation_matrices, batch_size=6)
    assert report.ok, str(report)
    assert report.passed[-2:] == ["optimality", "gradients"]
    with pytest.raises(SolverInputError, match="expected square"):
        get_solver("assignment")(torch.rand(2, 3, 4))


def test_patched_entry_points_are_read_and_loaded_once(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.write_module("plug_once", identity_solver_module("plug_once"))
    loads: list[str] = []

    class CountingEntryPoint(metadata.EntryPoint):
        def load(self) -> object:
            loads.append(self.name)
            return super().load()

    reads = patch_entry_points(
        monkeypatch,
        CountingEntryPoint(name="plug_once", value="plug_once:solve", group=ENTRY_POINT_GROUP),
    )
    register_builtin_argmax()
    get_solver("plug_argmax")
    assert reads == []  # a registered name never triggers plugin discovery

    theta = torch.randn(2, 3)
    assert torch.equal(get_solver("plug_once")(theta), theta)
    get_solver("plug_once")
    get_solver_spec("plug_once")
    list_solvers()
    load_plugins()
    assert reads == [ENTRY_POINT_GROUP] and loads == ["plug_once"]
    assert get_solver_spec("plug_once").source == "<unknown distribution>"

    load_plugins(reload=True)  # reads again, but a loaded plugin is not loaded twice
    assert len(reads) == 2 and loads == ["plug_once"]


# ----------------------------------------------------------------------------- broken plugins


@pytest.mark.parametrize(
    ("source", "cause"),
    [
        ("import aimlezoo_dependency_that_is_not_installed\n", ModuleNotFoundError),
        ("raise RuntimeError('plugin crashed at import')\n", RuntimeError),
    ],
)
def test_failing_plugin_is_reported_when_requested(
    site: Site, source: str, cause: type[Exception]
) -> None:
    register_builtin_argmax()
    builtins = set(solver_registry)  # the real built-ins too, whichever are registered
    site.install("aimlezoo-broken", {"broken": "plug_broken:solve"}, {"plug_broken": source})

    names = list_solvers()  # discovery does not raise
    assert set(names) == builtins and "plug_argmax" in names
    for name in builtins - {"plug_argmax"}:
        assert get_solver_spec(name).source == "builtin"
    assert get_solver_spec("plug_argmax").source == f"module {__name__}"  # registered here
    assert get_solver("plug_argmax")(torch.tensor([[0.0, 2.0, 1.0]])).tolist() == [[0.0, 1.0, 0.0]]

    with pytest.raises(SolverPluginError) as err:
        get_solver("broken")
    message = str(err.value)
    assert "entry point 'broken' = 'plug_broken:solve'" in message
    assert (
        "distribution 'aimlezoo-broken'" in message and "pip uninstall aimlezoo-broken" in message
    )
    assert isinstance(err.value.__cause__, cause)
    assert isinstance(err.value, ImportError)
    assert set(load_plugins()) == {"broken"}
    with pytest.raises(SolverPluginError):
        get_solver_spec("broken")


def test_fixed_plugin_loads_on_reload(site: Site) -> None:
    site.install(
        "aimlezoo-flaky",
        {"flaky": "plug_flaky:solve"},
        {"plug_flaky": "raise ImportError('not yet')\n"},
    )
    assert set(load_plugins()) == {"flaky"}
    site.write_module("plug_flaky", identity_solver_module("flaky"))
    assert load_plugins(reload=True) == {}
    assert get_solver_spec("flaky").source == "aimlezoo-flaky"


def test_uninstalled_plugin_is_forgotten_on_reload(site: Site) -> None:
    site.install(
        "aimlezoo-gone", {"gone": "plug_gone:solve"}, {"plug_gone": "import nowhere_xyz\n"}
    )
    assert set(load_plugins()) == {"gone"}
    shutil.rmtree(site.path / "aimlezoo_gone-1.0.dist-info")
    importlib.invalidate_caches()
    assert load_plugins(reload=True) == {}
    with pytest.raises(UnknownSolverError, match="unknown solver 'gone'"):
        get_solver("gone")


@pytest.mark.parametrize("name", ["plug_argmax", "plug_argmax_alias"])
def test_plugin_clashing_with_a_builtin_is_ignored_with_a_warning(site: Site, name: str) -> None:
    register_builtin_argmax()
    builtin = solver_registry["plug_argmax"]
    site.install(
        "aimlezoo-clash", {name: "plug_clash:solve"}, {"plug_clash": identity_solver_module(name)}
    )

    with pytest.warns(
        UserWarning,
        match=f"ignoring solver plugin entry point '{name}'.*taken by solver 'plug_argmax' "
        rf"\(module {__name__}\)",
    ):
        list_solvers()
    assert get_solver_spec(name) is builtin
    assert "plug_clash" not in sys.modules  # the clashing plugin was never imported
    assert load_plugins() == {}


@pytest.mark.parametrize("package", [False, True])
def test_plugin_module_imported_before_discovery_is_not_a_clash(site: Site, package: bool) -> None:
    """Also when the entry point names a re-export (``pkg:solve`` defined in ``pkg_impl``)."""
    modules = {"plug_early_impl": identity_solver_module("early")}
    if package:
        modules["plug_early"] = "from plug_early_impl import solve\n"
    else:
        modules = {"plug_early": modules["plug_early_impl"]}
    site.install("aimlezoo-early", {"early": "plug_early:solve"}, modules)
    early = importlib.import_module("plug_early")
    assert get_solver_spec("early").source.startswith("module plug_early")  # not "builtin"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "early" in list_solvers()
    assert load_plugins() == {} and get_solver_spec("early").factory is early.solve
    assert get_solver_spec("early").source == "aimlezoo-early"
    assert solver_spec(early.solve) is get_solver_spec("early")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "def solve(theta):\n    return theta\n",
            r"not decorated with @register_solver\('named', \.\.\.\)",
        ),
        (identity_solver_module("other_name"), "registered as 'other_name', not 'named'"),
    ],
)
def test_entry_point_must_name_a_registered_solver(
    site: Site, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    site.write_module("plug_named", source)
    patch_entry_points(monkeypatch, entry_point("named", "plug_named:solve"))
    with pytest.raises(SolverPluginError, match=message) as err:
        get_solver("named")
    assert "entry point 'named' = 'plug_named:solve'" in str(err.value)
    assert isinstance(err.value.__cause__, TypeError)
    assert "other_name" not in list_solvers()  # a failed plugin leaves nothing registered
    with pytest.raises(UnknownSolverError, match=r"plugins that failed to load: named;"):
        get_solver("other_name")  # the name the broken plugin would have registered


def test_scipy_oracle_matches_brute_force() -> None:
    """``linear_sum_assignment`` (the plugin's engine) against enumeration, as a sanity check."""
    weights = torch.rand(4, 4, dtype=torch.float64)
    rows, cols = linear_sum_assignment(weights.numpy(), maximize=True)
    candidates = permutation_matrices(weights)
    best = (candidates * weights).sum(dim=(1, 2)).max()
    assert float(weights[rows, cols].sum()) == pytest.approx(float(best), abs=1e-12)


def test_a_failed_plugin_leaves_none_of_its_aliases_registered(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
        from aimle_zoo.solvers import register_solver

        @register_solver("plug_misnamed", aliases=("plug_misnamed_alias",))
        def solve(theta):
            return theta
    """
    site.write_module("plug_aliased", source)
    patch_entry_points(monkeypatch, entry_point("aliased", "plug_aliased:solve"))
    assert set(load_plugins()) == {"aliased"}
    for name in ("plug_misnamed", "plug_misnamed_alias"):
        with pytest.raises(UnknownSolverError, match=f"unknown solver '{name}'") as err:
            get_solver_spec(name)
        assert "plug_misnamed_alias," not in str(err.value)  # not among the known names

    @register_solver("plug_misnamed_alias")  # the name is free again
    def solve(theta: Tensor) -> Tensor:
        return theta

    assert get_solver_spec("plug_misnamed_alias").factory is solve


def test_a_name_that_loads_from_a_later_entry_point_is_not_reported_failed(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two distributions offering one name: the broken first one does not mark as failed the
    solver that the second one then provides."""
    site.write_module("plug_dup_broken", "raise RuntimeError('broken copy')\n")
    site.write_module("plug_dup_good", identity_solver_module("dup"))
    patch_entry_points(
        monkeypatch,
        entry_point("dup", "plug_dup_broken:solve"),
        entry_point("dup", "plug_dup_good:solve"),
    )
    assert load_plugins() == {}
    assert get_solver("dup")(torch.ones(1, 2)).tolist() == [[1.0, 1.0]]
