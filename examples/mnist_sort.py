"""Learning to sort MNIST numbers through a permutation layer (the NeuralSort task).

Each example is a sequence of ``--n`` numbers, each shown as ``--digits`` MNIST images side by
side (Grover et al., 2019: "large MNIST", 4-digit numbers in 28 × 112 images). A small CNN maps
every image to a score s_i. With ``--layer assignment`` the layer solves the maximum assignment
of θ_ij = s_i · j, which places the items in ascending order of score (the rearrangement
inequality), and the loss is the Hamming distance between that permutation matrix and the one
that sorts the true values. With ``--layer ranking`` the layer is the ranking solver on θ = s,
whose solution is each item's rank, and the loss the L1 distance to the true ranks. Only the
order supervises the network: it never sees a number.

One run trains each estimator in ``--estimators`` with the same data, seed and schedule and
reports, on sequences drawn from the MNIST test images, the share of sequences sorted exactly
and the share of items put in their right place. ``relaxed`` is Gumbel noise through the
solver's relaxation: Gumbel–Sinkhorn (Mena et al., 2018) for the assignment, sigmoid soft ranks
for the ranking. ``fenchel-young`` trains θ on the perturbed Fenchel–Young loss to the target
solution instead (Gaussian noise, σ = 1, one sample), with no distance loss and no layer.

Run (the README's tables)::

    python examples/mnist_sort.py --data-dir ../shared/data/mnist --out runs/mnist-sort.json
    python examples/mnist_sort.py --data-dir ../shared/data/mnist --layer ranking \
        --out runs/mnist-sort-ranking.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aimle_zoo import AIMLE, DifferentiableSolver, FenchelYoungLoss
from aimle_zoo.data.mnist import load_mnist
from aimle_zoo.estimators import IMLE, STE, Estimator, Relaxed, expand_samples
from aimle_zoo.solvers import Solver, get_solver, sorting_weights

ESTIMATORS = ("aimle-forward", "aimle-central", "imle", "ste", "relaxed", "fenchel-young")
LAYERS = {"assignment": "linear_assignment", "ranking": "ranking"}  # layer -> default solver


def make_estimator(name: str) -> Estimator | None:
    """The comparison's estimators with their default settings (I-MLE at the untuned λ = 10);
    ``None`` for the Fenchel–Young loss, which trains on the target without a layer."""
    if name == "fenchel-young":
        return None
    if name == "aimle-forward":
        return AIMLE()
    if name == "aimle-central":
        return AIMLE(symmetric=True)
    if name == "imle":
        return IMLE(lambda_=10.0)
    if name == "ste":
        return STE()
    if name == "relaxed":
        return Relaxed(temperature=1.0)
    raise ValueError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")


class Sequences:
    """Random sequences of multi-digit MNIST numbers: images ``[B, n, 1, 28, 28·d]``, values
    ``[B, n]`` and the sorting permutation matrices ``[B, n, n]`` (item i at its rank)."""

    def __init__(self, images: Tensor, labels: Tensor, n: int, digits: int) -> None:
        self.images = images.float().div(255.0)  # [N, 28, 28]
        self.labels = labels
        self.n, self.digits = n, digits

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        picks = torch.randint(len(self.labels), (batch, self.n, self.digits), generator=generator)
        tiles = self.images[picks]  # [B, n, d, 28, 28]
        images = tiles.permute(0, 1, 3, 2, 4).reshape(batch, self.n, 1, 28, 28 * self.digits)
        powers = 10 ** torch.arange(self.digits - 1, -1, -1)  # [d]: the first image leads
        values = (self.labels[picks] * powers).sum(dim=2)  # [B, n]
        ranks = values.argsort(dim=1, stable=True).argsort(dim=1)  # [B, n], ties by position
        return images, values, F.one_hot(ranks, self.n).float()


class Layout:
    """How a layer's solutions sort: θ from the scores ``[B, n]``, the target solution from the
    sorting permutation ``[B, n, n]``, and each item's place ``[B, n]`` from a solution."""

    def __init__(self, layer: str) -> None:
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}; choose from {', '.join(LAYERS)}")
        self.assignment = layer == "assignment"

    def theta(self, scores: Tensor) -> Tensor:
        """``[B, n, n]`` assignment weights s_i · j, or the scores themselves."""
        return sorting_weights(scores) if self.assignment else scores

    def target(self, permutation: Tensor) -> Tensor:
        """The permutation matrix itself, or the ranks 1..n it gives the items."""
        return permutation if self.assignment else permutation.argmax(dim=2).float() + 1

    def places(self, z: Tensor) -> Tensor:
        """Each item's 0-based place: the column of its 1, or its rank − 1."""
        return z.argmax(dim=2) if self.assignment else z.round().long() - 1


class Scorer(nn.Module):
    """A small CNN: one image ``[*, 1, 28, 28·d]`` -> one score ``[*]``."""

    def __init__(self, digits: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Linear(32 * 7 * 7 * digits, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, images: Tensor) -> Tensor:
        batch_shape = images.shape[:-3]
        features = self.features(images.reshape(-1, *images.shape[-3:]))
        return self.head(features.flatten(1)).reshape(batch_shape)


def evaluate(
    scorer: Scorer, solver: Solver, layout: Layout, data: Sequences, sequences: int, seed: int
) -> dict[str, float]:
    """Sorted-exactly share and right-place share of the solver's orders (the layer's eval-mode
    MAP, no noise) over fresh test sequences (fixed seed)."""
    generator = torch.Generator().manual_seed(seed)
    exact = placed = 0.0
    scorer.eval()
    with torch.no_grad():
        for start in range(0, sequences, 100):
            images, _, target = data.sample(min(100, sequences - start), generator)
            places = layout.places(solver(layout.theta(scorer(images))))  # [B, n]
            right = places == target.argmax(dim=2)  # [B, n] item's place
            exact += float(right.all(dim=1).sum())
            placed += float(right.float().mean(dim=1).sum())
    return {"sorted_exactly": exact / sequences, "right_place": placed / sequences}


def train_one(
    name: str, train: Sequences, test: Sequences, args: argparse.Namespace
) -> dict[str, object]:
    """Train a fresh scorer with one estimator; returns its test metrics and timings."""
    torch.manual_seed(args.seed)
    scorer = Scorer(args.digits)
    solver = get_solver(args.solver or LAYERS[args.layer])
    layout = Layout(args.layer)
    estimator = make_estimator(name)
    fenchel_young = FenchelYoungLoss(solver, sigma=1.0, samples=1)
    layer = DifferentiableSolver(solver, estimator) if estimator is not None else None
    optimizer = torch.optim.Adam(scorer.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    losses = []
    for step in range(1, args.steps + 1):
        images, _, permutation = train.sample(args.batch_size, generator)
        theta = layout.theta(scorer(images))  # [B, n, n] or [B, n]
        target = layout.target(permutation)  # of θ's shape
        if layer is None:
            loss = fenchel_young(theta, target)
        else:
            z = layer(theta)  # [B·S, n, n]
            samples = z.shape[0] // args.batch_size
            loss = (z - expand_samples(target, samples)).abs().flatten(1).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % max(args.steps // 10, 1) == 0:
            recent = sum(losses[-50:]) / len(losses[-50:])
            print(f"  {name} step {step}/{args.steps}: training loss {recent:.3f}", flush=True)
    seconds = time.perf_counter() - started
    metrics = evaluate(scorer, solver, layout, test, args.test_sequences, seed=args.seed + 1)
    return {"estimator": name, **metrics, "train_seconds": seconds, "final_loss": losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="the MNIST IDX files")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--layer", choices=sorted(LAYERS), default="assignment")
    parser.add_argument(
        "--solver", default=None, help="a registered solver for the layer (default: its own)"
    )
    parser.add_argument("--n", type=int, default=5, help="numbers per sequence")
    parser.add_argument("--digits", type=int, default=4, help="digits per number")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=20, help="sequences per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-sequences", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few images")
    args = parser.parse_args()
    names = [name.strip() for name in args.estimators.split(",") if name.strip()]
    for name in names:
        make_estimator(name)  # unknown names fail before any training
    if args.smoke:
        args.steps, args.test_sequences = min(args.steps, 6), min(args.test_sequences, 50)
    torch.set_num_threads(1)
    limit = 2000 if args.smoke else None
    train_images, train_labels = load_mnist(args.data_dir, "train")
    test_images, test_labels = load_mnist(args.data_dir, "test")
    train = Sequences(train_images[:limit], train_labels[:limit], args.n, args.digits)
    test = Sequences(test_images[:limit], test_labels[:limit], args.n, args.digits)
    results = []
    for name in names:
        print(f"training with {name} ({args.steps} steps of {args.batch_size} sequences)")
        results.append(train_one(name, train, test, args))
    print(f"\n| estimator | sorted exactly | right place | train s |  (n = {args.n}, {args.layer})")
    print("|---|---|---|---|")
    for row in results:
        print(
            f"| {row['estimator']} | {row['sorted_exactly']:.3f} | {row['right_place']:.3f} "
            f"| {row['train_seconds']:.0f} |"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(args.out.name + ".partial")
        settings = vars(args) | {"data_dir": str(args.data_dir), "out": str(args.out)}
        partial.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
        partial.replace(args.out)


if __name__ == "__main__":
    main()
