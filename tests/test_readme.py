"""The README's Python examples run as printed, each in a fresh process, and print what their
comments say they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _run(code: str, cwd: Path) -> str:
    """Run ``code`` as a script in ``cwd`` (one thread, offline); return its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"README example failed:\n{code}\n{done.stderr[-3000:]}"
    return done.stdout


def _block(start: str) -> str:
    (block,) = [block for block in _python_blocks() if block.startswith(start)]
    return block


def test_every_python_example_is_checked_here() -> None:
    starts = [block.splitlines()[0] for block in _python_blocks()]
    assert len(starts) == 7, starts  # a new example needs a test below


def test_the_top_k_example_learns_to_pick_the_first_five(tmp_path: Path) -> None:
    output = _run(_block("import torch\nfrom aimle_zoo import AIMLE, AdaptiveTarget"), tmp_path)
    loss, diagnostics = output.split(" ", 1)
    assert float(loss) < 0.5  # the comment says ~0.2 (of a Hamming loss of up to 10)
    assert "'lambda'" in diagnostics and "'beta'" in diagnostics


def test_the_decorator_example_gives_a_differentiable_argmax(tmp_path: Path) -> None:
    code = _block("import torch\nfrom aimle_zoo import aimle")
    code += (
        "theta = torch.randn(4, 6, requires_grad=True)\n"
        "z = argmax(theta)\n"  # [40, 6]: 10 samples per instance
        "assert z.shape == (40, 6) and (z.sum(-1) == 1).all()\n"
        "(z * torch.arange(6.0)).sum().backward()\n"
        "assert theta.grad.abs().sum() > 0\n"
    )
    _run(code, tmp_path)


def test_the_plugin_example_passes_the_conformance_checks(tmp_path: Path) -> None:
    output = _run(_block("import torch\nfrom aimle_zoo.solvers import register_solver"), tmp_path)
    checks = [line.strip() for line in output.splitlines() if line.startswith("  ")]
    assert len(checks) >= 5 and all(line.endswith(": passed") for line in checks), output


def test_the_gradient_fidelity_example_prints_its_comments(tmp_path: Path) -> None:
    code = _block("import torch\nfrom aimle_zoo.estimators import AIMLE, IMLE")
    expected = [line[2:].split(" ...")[0] for line in code.splitlines() if line.startswith("# ")]
    printed = _run(code, tmp_path).splitlines()
    assert len(printed) == len(expected) == 2
    for line, comment in zip(printed, expected, strict=True):
        assert line.startswith(comment), (line, comment)


def test_the_export_example_exports_verifies_and_runs(tmp_path: Path) -> None:
    """It loads the bundled checkpoint by name from another working directory."""
    output = _run(_block("import aimle_zoo\nfrom aimle_zoo.export"), tmp_path)
    assert "passed, max abs diff" in output
    written = sorted(path.name for path in (tmp_path / "exported").iterdir())
    assert written == ["l2x-mnist.onnx", "l2x-mnist.pt"]


def test_the_cache_example_answers_most_calls_from_the_pool(tmp_path: Path) -> None:
    output = _run(_block("import torch\nfrom aimle_zoo import AIMLE, CachedSolver"), tmp_path)
    counts, exact = output.splitlines()
    calls, answers, pool = map(int, counts.split())
    assert calls + answers == 100 and answers > 4 * calls  # solve_ratio 0.1
    assert 500 < pool <= 500 + 70 * calls  # the seeded paths and the solver's new ones
    assert exact == "True"
    expected = "# " + " ".join(counts.split())  # the comment prints what the run prints
    assert expected in _block("import torch\nfrom aimle_zoo import AIMLE, CachedSolver")


def test_the_ranking_example_learns_the_ranks(tmp_path: Path) -> None:
    code = _block("import torch\nfrom aimle_zoo import DifferentiableSolver, get_solver")
    exactly_ranked = float(_run(code, tmp_path))
    assert exactly_ranked > 0.7  # the comment says 0.83 of the lists; chance is 1/8! = 2.5e-5
