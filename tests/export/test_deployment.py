"""Deployment proof: exported files reproduce eager outputs in fresh processes without aimle_zoo.

The eager outputs were saved beforehand (``tests/export/conftest.py``, at a batch size and, for
text, a sequence length that the exports never saw). One subprocess per format runs every model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import aimle_zoo.export.runner as runner_module

from ..models._helpers import TINY
from .conftest import Exported

#: Refuses to import a package for which ``blocked(top-level name)`` holds (set by each run).
_IMPORT_GUARD = textwrap.dedent(
    """
    import importlib.abc, sys

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name.split(".")[0]):
                raise ModuleNotFoundError(f"{name} is not installed in this deployment")
            return None

    sys.meta_path.insert(0, Guard())
    """
)

#: The onnxruntime deployment: the standard library, numpy and onnxruntime, nothing else.
_ONLY_NUMPY_AND_ONNXRUNTIME = (
    "def blocked(top):\n"
    "    return top not in sys.stdlib_module_names and top not in ('numpy', 'onnxruntime')\n"
)

#: The TorchScript deployment: torch (and its dependencies) but not aimle_zoo.
_NO_AIMLE_ZOO = (
    "def blocked(top):\n    return top in ('aimle_zoo', 'onnxruntime', 'onnx', 'onnxscript')\n"
)

_ONNX_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json
    import numpy as np

    folder, runner_file, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    spec = importlib.util.spec_from_file_location("deployed_runner", runner_file)
    runner_module = sys.modules["deployed_runner"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner_module)
    results = {}
    for name in names:
        runner = runner_module.OnnxRunner(f"{folder}/{name}.onnx", threads=1)
        with np.load(f"{folder}/{name}.inputs.npz") as inputs:
            outputs = runner.run({key: inputs[key] for key in inputs.files})
        results[name] = {
            "providers": runner.providers,
            "model_name": runner.metadata["model_name"],
            "outputs": {key: value.tolist() for key, value in outputs.items()},
        }
    forbidden = sorted(m for m in ("torch", "aimle_zoo", "onnx", "scipy") if m in sys.modules)
    try:
        import torch
    except ModuleNotFoundError:
        guarded = True
    else:
        guarded = False
    print(json.dumps({"results": results, "forbidden_loaded": forbidden, "guarded": guarded}))
    """
)

_TORCHSCRIPT_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import torch

    folder, names = sys.argv[1], sys.argv[2].split(",")
    results = {}
    for name in names:
        extra = {"aimle_zoo.json": ""}
        module = torch.jit.load(f"{folder}/{name}.pt", _extra_files=extra)
        metadata = json.loads(extra["aimle_zoo.json"])
        with np.load(f"{folder}/{name}.inputs.npz") as inputs:
            tensors = [torch.from_numpy(inputs[spec["name"]]) for spec in metadata["inputs"]]
        with torch.no_grad():
            outputs = module(*tensors)
        names_out = [spec["name"] for spec in metadata["outputs"]]
        results[name] = {
            "outputs": {key: value.tolist() for key, value in zip(names_out, outputs)},
        }
    forbidden = sorted(m for m in ("aimle_zoo", "onnxruntime") if m in sys.modules)
    try:
        import aimle_zoo
    except ModuleNotFoundError:
        guarded = True
    else:
        guarded = False
    print(json.dumps({"results": results, "forbidden_loaded": forbidden, "guarded": guarded}))
    """
)


def _run(script: str, blocked: str, args: list[str], cwd: Path) -> dict:
    """Run ``script`` in a fresh interpreter that refuses the ``blocked`` imports."""
    code = f"import sys\n{blocked}\n{_IMPORT_GUARD}\n{script}"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    environment.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _assert_reproduces(results: dict, folder: Path) -> None:
    for name in TINY:
        with np.load(folder / f"{name}.expected.npz") as expected:
            produced = results[name]["outputs"]
            assert sorted(produced) == sorted(expected.files)
            for key in expected.files:
                got = np.asarray(produced[key], dtype=expected[key].dtype)
                np.testing.assert_allclose(got, expected[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_onnx_files_run_with_only_numpy_and_onnxruntime(
    exported: dict[str, Exported], exported_folder: Path, tmp_path: Path
) -> None:
    assert set(exported) == set(TINY)
    args = [str(exported_folder), runner_module.__file__, ",".join(TINY)]
    report = _run(_ONNX_SCRIPT, _ONLY_NUMPY_AND_ONNXRUNTIME, args, tmp_path)
    assert report["forbidden_loaded"] == [] and report["guarded"]  # torch cannot even import
    for name in TINY:
        assert report["results"][name]["providers"] == ["CPUExecutionProvider"]
        assert report["results"][name]["model_name"] == name
    _assert_reproduces(report["results"], exported_folder)


def test_torchscript_files_run_with_torch_alone(
    exported: dict[str, Exported], exported_folder: Path, tmp_path: Path
) -> None:
    assert set(exported) == set(TINY)
    args = [str(exported_folder), ",".join(TINY)]
    report = _run(_TORCHSCRIPT_SCRIPT, _NO_AIMLE_ZOO, args, tmp_path)
    assert report["forbidden_loaded"] == [] and report["guarded"]  # aimle_zoo cannot import
    _assert_reproduces(report["results"], exported_folder)
