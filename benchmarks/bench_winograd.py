"""Can a Winograd convolution in standard ONNX operators beat onnxruntime's own ``Conv``?

The grid model's exported path is bound by the arithmetic of its 64 -> 64 channel 3×3
convolution on a 48×48 feature map (``bench_export.py``: its "eager / floor" is below 2).
Winograd's F(m×m, 3×3) computes each m×m output tile from an (m+2)×(m+2) input tile with
(m+2)² instead of 9·m² multiplications per channel pair, Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A. Here
the tiles are gathered by index, both transforms are one Kronecker-product matrix product
each, and the (m+2)² products per tile position are one batched matrix product; the module
is exported with torch's ONNX exporter and timed in a one-thread onnxruntime session against
the same convolution as one ``Conv`` node, after checking it against ``F.conv2d``.

Run: ``cd benchmarks && python bench_winograd.py`` (``--quick`` for fewer repeats,
``--profile`` for onnxruntime's time per node of each form).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _timing import interleaved_times, print_table
from onnxruntime import InferenceSession, SessionOptions
from torch import Tensor, nn

CHANNELS, SIZE = 64, 48  # the grid model's second convolution at its default 96×96 maps


def winograd_matrices(m: int, r: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Cook–Toom matrices ``(Aᵀ [m, a], G [a, r], Bᵀ [a, a])`` of F(m, r), a = m + r − 1, on the
    points 0, ±1, ±2, ±1/2, ... and ∞, in float64: y = Aᵀ[(G g) ⊙ (Bᵀ d)] is the
    correlation y_i = Σ_k d_{i+k} g_k."""
    a = m + r - 1
    points = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5][: a - 1]
    count = len(points)
    at = np.zeros((m, a))
    at[:, :count] = np.array(points)[None, :] ** np.arange(m)[:, None]
    at[m - 1, count] = 1.0
    g = np.zeros((a, r))
    bt = np.zeros((a, a))
    for j, point in enumerate(points):
        others = [other for k, other in enumerate(points) if k != j]
        g[j] = point ** np.arange(r) / np.prod([point - other for other in others])
        bt[j, :count] = np.poly(others)[::-1]  # ascending coefficients of Π_{k≠j}(x − f_k)
    g[count, r - 1] = 1.0
    bt[count] = np.poly(points)[::-1]
    return torch.from_numpy(at), torch.from_numpy(g), torch.from_numpy(bt)


class WinogradConv(nn.Module):
    """A 3×3, stride-1, padding-1 convolution ``[B, C, S, S] -> [B, K, S, S]`` as F(m×m, 3×3)."""

    def __init__(self, weight: Tensor, bias: Tensor, m: int, size: int) -> None:
        super().__init__()
        if size % m:
            raise ValueError(f"the map size {size} must be a multiple of the tile size {m}")
        at, g, bt = winograd_matrices(m)
        a, tiles = m + 2, size // m
        self.m, self.a, self.tiles = m, a, tiles
        kernels = torch.einsum("ir,kcrs,js->ijkc", g, weight.double(), g)  # [a, a, K, C]
        self.kernels = nn.Buffer(kernels.reshape(a * a, *weight.shape[:2]).float())
        self.input_transform = nn.Buffer(torch.kron(bt, bt).t().float())  # [a², a²]
        self.output_transform = nn.Buffer(torch.kron(at, at).t().float())  # [a², m²]
        self.bias = nn.Buffer(bias.detach().clone())
        padded = size + 2
        rows = torch.arange(tiles)[:, None] * m + torch.arange(a)[None]  # [T, a]
        index = rows[:, None, :, None] * padded + rows[None, :, None, :]  # [T, T, a, a]
        self.tile_index = nn.Buffer(index.flatten())

    def forward(self, x: Tensor) -> Tensor:
        batch, channels = x.shape[:2]
        m, a, tiles = self.m, self.a, self.tiles
        flat = F.pad(x, (1, 1, 1, 1)).reshape(batch * channels, -1)  # [B·C, (S+2)²]
        cut = flat.index_select(1, self.tile_index).reshape(-1, a * a)  # [B·C·T², a²]
        transformed = (cut @ self.input_transform).reshape(batch, channels, tiles * tiles, a * a)
        transformed = transformed.permute(3, 1, 0, 2).reshape(a * a, channels, -1)  # [a², C, B·T²]
        products = torch.bmm(self.kernels, transformed)  # [a², K, B·T²]
        out = products.reshape(a * a, -1).t() @ self.output_transform  # [K·B·T², m²]
        out = out.reshape(-1, batch, tiles, tiles, m, m).permute(1, 0, 2, 4, 3, 5)
        return out.reshape(batch, -1, tiles * m, tiles * m) + self.bias[:, None, None]


def ort_session(
    module: nn.Module, example: Tensor, path: Path, profile: bool = False
) -> InferenceSession:
    """``module`` exported to ONNX (opset 17) in a one-thread onnxruntime session."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), path, dynamo=False, opset_version=17)
    options = SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(path.with_suffix(""))
    return InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def node_times(session: InferenceSession, feed: dict[str, np.ndarray], calls: int = 50) -> None:
    """Print the median time per node (µs) over ``calls`` runs of a profiling session."""
    for _ in range(calls):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["name"].removesuffix("_kernel_time")].append(event["dur"])
    rows = sorted(((float(np.median(value)), name) for name, value in times.items()), reverse=True)
    print_table(["node", "µs"], [[name, micros] for micros, name in rows if micros >= 5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--profile", action="store_true", help="time per node of each form")
    args = parser.parse_args()
    rounds = 1 if args.quick else 5
    torch.manual_seed(0)
    torch.set_num_threads(1)
    conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1).eval()
    image = torch.randn(1, CHANNELS, SIZE, SIZE)
    with torch.no_grad():
        expected = conv(image).numpy()
    variants: list[tuple[str, nn.Module, float]] = [("Conv (direct)", conv, 9.0)]
    for m in (2, 4):
        module = WinogradConv(conv.weight.detach(), conv.bias.detach(), m, SIZE).eval()
        variants.append((f"Winograd F({m}x{m}, 3x3)", module, (m + 2) ** 2 / m**2))
    with tempfile.TemporaryDirectory() as folder:
        calls, errors = [], []
        for index, (_, module, _) in enumerate(variants):
            session = ort_session(module, image, Path(folder) / f"conv{index}.onnx")
            feed = {session.get_inputs()[0].name: image.numpy()}
            errors.append(float(np.abs(session.run(None, feed)[0] - expected).max()))
            calls.append(functools.partial(session.run, None, feed))
        seconds = interleaved_times(calls, rounds=rounds, repeats=3)
    rows = [
        [label, f"{multiplies:.2f}", 1e3 * time, f"{seconds[0] / time:.2f}x", f"{error:.1e}"]
        for (label, _, multiplies), time, error in zip(variants, seconds, errors, strict=True)
    ]
    print(f"\n64 -> 64 channel 3x3 convolution, {SIZE}x{SIZE} map, batch 1, onnxruntime 1 thread")
    print_table(["form", "multiplies / output", "ms", "speed-up", "max abs diff"], rows)
    if args.profile:
        with tempfile.TemporaryDirectory() as folder:
            for index, (label, module, _) in enumerate(variants):
                path = Path(folder) / f"conv{index}.onnx"
                session = ort_session(module, image, path, profile=True)
                print(f"\n{label}: onnxruntime time per node (median of 50 calls, >= 5 µs)")
                node_times(session, {session.get_inputs()[0].name: image.numpy()})


if __name__ == "__main__":
    main()
