"""``aimle-zoo export``, ``predict`` and ``quickstart`` through Typer's test runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import aimle_zoo
from aimle_zoo.cli import app
from aimle_zoo.export import DEFAULT_OPSET, load_exported, read_metadata
from aimle_zoo.export.quickstart import format_table, run_quickstart

from ..models._helpers import TINY, tiny_model
from .conftest import Exported, build_tiny

runner = CliRunner()


def _checkpoint(folder: Path, name: str) -> Path:
    """Save the tiny model ``name`` as a checkpoint folder."""
    build_tiny(name).save_pretrained(folder)
    return folder


def test_export_writes_both_formats_and_verifies_them(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "grid-tiny", "grid_shortest_path")
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(out), "--verify"])
    assert result.exit_code == 0, result.output
    assert sorted(entry.name for entry in out.iterdir()) == ["grid-tiny.onnx", "grid-tiny.pt"]
    assert "torchscript via script" in result.output and "onnx via legacy_script" in result.output
    assert result.output.count("vs eager PyTorch: passed") == 2
    assert f"wrote {out / 'grid-tiny.onnx'} (" in result.output
    assert f"onnx via legacy_script, opset {DEFAULT_OPSET}, " in result.output
    assert "torchscript via script, opset" not in result.output  # an ONNX setting only
    model = build_tiny("grid_shortest_path")
    (maps,) = model.example_inputs(3)
    with torch.no_grad():
        path = model(maps).numpy()
    for file in out.iterdir():
        assert read_metadata(file)["model_name"] == "grid-tiny"
        produced = load_exported(file).run({"maps": maps.numpy()})
        np.testing.assert_array_equal(produced["path"], path)


def test_export_of_a_model_name_uses_fresh_default_weights(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["export", "l2x_tabular", "--format", "torchscript", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "freshly initialised default configuration (untrained)" in result.output
    assert "vs eager PyTorch" not in result.output  # verified only when asked (--verify)
    assert [entry.name for entry in out.iterdir()] == ["l2x_tabular.pt"]
    assert read_metadata(out / "l2x_tabular.pt")["config"]["input_dim"] == 10


def test_export_errors_are_reported_without_a_traceback(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert missing.exit_code == 1 and "error: there is no checkpoint folder" in missing.output
    checkpoint = _checkpoint(tmp_path / "grid-tiny", "grid_shortest_path")
    args = ["export", str(checkpoint), "--format", "onnx", "--opset", "30", "--out", str(tmp_path)]
    bad_opset = runner.invoke(app, args)
    assert bad_opset.exit_code == 1 and "opset 30 is not supported" in bad_opset.output
    assert not (tmp_path / "grid-tiny.onnx").exists()
    both = runner.invoke(app, [*args[:3], "all", *args[4:]])  # --format all
    assert both.exit_code == 1 and "opset 30 is not supported" in both.output
    assert not list(tmp_path.glob("grid-tiny.*"))  # not even the TorchScript file


def test_predict_runs_the_solver_after_a_split_export(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "l2x-tiny", "l2x_tabular")
    args = ["export", str(checkpoint), "--format", "onnx", "--split", "--out", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    model = aimle_zoo.from_pretrained(str(checkpoint))
    (features,) = model.example_inputs(6)
    np.save(tmp_path / "features.npy", features.numpy())
    result = runner.invoke(
        app, ["predict", str(tmp_path / "l2x-tiny.onnx"), "--input", str(tmp_path / "features.npy")]
    )
    assert result.exit_code == 0, result.output
    assert "then the solver topk on θ (split export)" in result.output
    with np.load(tmp_path / "features.outputs.npz") as outputs, torch.no_grad():
        np.testing.assert_allclose(
            outputs["theta"], model.feature_scores(features).numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(outputs["solution"], model.select(features).numpy())


@pytest.mark.parametrize("file_format", ["onnx", "torchscript"])
def test_predict_runs_an_exported_file_on_npz_and_npy_inputs(
    exported: dict[str, Exported], tmp_path: Path, file_format: str
) -> None:
    item = exported["l2x_tabular"]
    model_file = item.onnx if file_format == "onnx" else item.torchscript
    (features,) = item.model.example_inputs(5)
    with torch.no_grad():
        logits = item.model(features).numpy()
    np.savez(tmp_path / "batch.npz", features=features.numpy())
    np.save(tmp_path / "single.npy", features.numpy())
    result = runner.invoke(
        app, ["predict", str(model_file), "--input", str(tmp_path / "batch.npz")]
    )
    assert result.exit_code == 0, result.output
    assert "prediction: float32 [5, 2]" in result.output
    with np.load(tmp_path / "batch.outputs.npz") as outputs:
        np.testing.assert_allclose(outputs["prediction"], logits, rtol=1e-4, atol=1e-5)
    target = tmp_path / "out.npz"
    args = ["predict", str(model_file), "--input", str(tmp_path / "single.npy")]
    result = runner.invoke(app, [*args, "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"wrote {target}"
    with np.load(target) as outputs:
        assert sorted(outputs.files) == ["mask", "prediction"]
        np.testing.assert_allclose(outputs["prediction"], logits, rtol=1e-4, atol=1e-5)


def test_predict_errors_say_what_to_fix(exported: dict[str, Exported], tmp_path: Path) -> None:
    model_file = str(exported["l2x_tabular"].onnx)
    np.save(tmp_path / "doubles.npy", np.zeros((2, 10)))
    result = runner.invoke(app, ["predict", model_file, "--input", str(tmp_path / "doubles.npy")])
    assert result.exit_code == 1 and "astype(np.float32)" in result.output
    np.savez(tmp_path / "named.npz", x=np.zeros((2, 10), dtype=np.float32))
    result = runner.invoke(app, ["predict", model_file, "--input", str(tmp_path / "named.npz")])
    assert result.exit_code == 1 and "missing input(s) ['features']" in result.output
    args = ["predict", str(tmp_path / "none.onnx"), "--input", str(tmp_path / "named.npz")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "no exported model at" in result.output
    assert not list(tmp_path.glob("*.outputs.npz"))


def test_export_and_predict_refuse_bad_options_before_any_work(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    """--split with TorchScript (which has no split form), an --out that is a file, and an
    --output that is not .npz are refused before exporting or running anything."""
    checkpoint = _checkpoint(tmp_path / "l2x-tiny", "l2x_tabular")
    for file_format in ("torchscript", "all"):
        args = ["export", str(checkpoint), "--split", "--format", file_format]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and "--split is for ONNX only" in result.output
    (tmp_path / "afile").write_text("")
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "afile")])
    assert result.exit_code == 2 and "--out names a folder, not a file" in result.output
    assert not (tmp_path / "out").exists()
    np.save(tmp_path / "x.npy", np.zeros((2, 10), np.float32))
    args = ["predict", str(exported["l2x_tabular"].onnx), "--input", str(tmp_path / "x.npy")]
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "y.npy")])
    assert result.exit_code == 1 and "name the file *.npz" in result.output


def test_torchscript_runs_a_read_only_array_without_a_warning(
    exported: dict[str, Exported],
) -> None:
    import warnings

    item = exported["l2x_tabular"]
    (features,) = item.model.example_inputs(3)
    frozen = features.numpy().copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = load_exported(item.torchscript).run({"features": frozen})
    expected = load_exported(item.torchscript).run({"features": features.numpy()})
    np.testing.assert_array_equal(outputs["prediction"], expected["prediction"])


def test_quickstart_runs_every_bundled_checkpoint_on_its_sample_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "checkpoints"
    grid = _checkpoint(root / "grid-tiny", "grid_shortest_path")
    _checkpoint(root / "plain-tiny", "grid_shortest_path")  # no sample inputs bundled
    samples = torch.rand(3, 3, 40, 40).numpy()  # larger maps than the example's 32×32
    np.savez(grid / "sample_inputs.npz", maps=samples)
    monkeypatch.setenv("AIMLE_ZOO_CHECKPOINTS", str(root))
    out = tmp_path / "out"
    result = runner.invoke(app, ["quickstart", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "[1/2] grid-tiny: running on sample inputs [(3, 3, 40, 40)]" in result.stderr
    assert "[2/2] plain-tiny: running on sample inputs [(4, 3, 32, 32)]" in result.stderr
    assert "[2/2] plain-tiny: verifying in onnxruntime" in result.stderr
    table = result.stdout.splitlines()
    assert [cell.strip() for cell in table[0].split("|")[1:-1]] == [
        "model",
        "source",
        "parameters",
        "eager ms",
        "TorchScript ms",
        "onnxruntime ms",
        "max abs diff",
    ]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table[2:4]}
    assert rows == {"grid-tiny": "checkpoint", "plain-tiny": "checkpoint"}
    files = sorted(entry.name for entry in out.iterdir())
    assert files == ["grid-tiny.onnx", "grid-tiny.pt", "plain-tiny.onnx", "plain-tiny.pt"]
    assert read_metadata(out / "grid-tiny.onnx")["inputs"][0]["shape"] == ["batch", 3, 40, 40]
    assert table[-1] == f"exported files in {out}"


def test_quickstart_without_checkpoints_uses_fresh_default_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIMLE_ZOO_CHECKPOINTS", str(tmp_path / "empty"))
    lines: list[str] = []
    configs = {"grid_shortest_path": TINY["grid_shortest_path"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # timed on one thread, then put back
    try:
        rows = run_quickstart(tmp_path / "out", progress=lines.append, fallback_configs=configs)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert lines[0].startswith(f"no bundled checkpoints in {tmp_path / 'empty'}")
    assert [(row.model, row.source) for row in rows] == [("grid_shortest_path", "untrained")]
    model = build_tiny("grid_shortest_path")
    assert rows[0].parameters == sum(p.numel() for p in model.parameters())
    assert rows[0].max_abs_diff < 1e-4 and rows[0].onnx_path.is_file()
    assert "| grid_shortest_path | untrained |" in format_table(rows)


def test_a_runs_best_checkpoint_exports_under_the_runs_name(tmp_path: Path) -> None:
    """Every run's checkpoint folder is called best/: the files are named after the run, so
    two runs exported into one folder do not overwrite each other."""
    from aimle_zoo.export.quickstart import resolve_model

    for run in ("A", "B"):
        tiny_model("l2x_tabular").save_pretrained(tmp_path / run / "best")
        assert resolve_model(str(tmp_path / run / "best"))[1] == f"{run}-best"
    assert resolve_model(str(tmp_path / "A" / "best") + "/")[1] == "A-best"


def test_predict_keeps_existing_outputs_and_the_input_unless_told(
    exported: dict[str, Exported], tmp_path: Path
) -> None:
    """x.npy and x.npz share the default output x.outputs.npz: the second run is refused
    (the first run's outputs are kept) until --overwrite; an output naming the input file is
    refused even with --overwrite."""
    model_file = str(exported["l2x_tabular"].onnx)
    (features,) = exported["l2x_tabular"].model.example_inputs(3)
    np.save(tmp_path / "x.npy", features.numpy())
    np.savez(tmp_path / "x.npz", features=features[:2].numpy())
    first = runner.invoke(app, ["predict", model_file, "--input", str(tmp_path / "x.npy")])
    assert first.exit_code == 0, first.output
    target = tmp_path / "x.outputs.npz"
    kept = target.read_bytes()
    second = runner.invoke(app, ["predict", model_file, "--input", str(tmp_path / "x.npz")])
    assert second.exit_code == 1 and "already exists; pass --overwrite" in second.output
    assert target.read_bytes() == kept
    args = ["predict", model_file, "--input", str(tmp_path / "x.npz"), "--overwrite"]
    third = runner.invoke(app, args)
    assert third.exit_code == 0, third.output
    with np.load(target) as outputs:
        assert outputs["prediction"].shape[0] == 2  # the .npz run's two rows replaced three
    inputs = (tmp_path / "x.npz").read_bytes()
    for extra in ([], ["--overwrite"]):
        args = ["predict", model_file, "--input", str(tmp_path / "x.npz")]
        itself = runner.invoke(app, [*args, "--output", str(tmp_path / "x.npz"), *extra])
        assert itself.exit_code == 1 and "is the input file" in itself.output
    assert (tmp_path / "x.npz").read_bytes() == inputs
