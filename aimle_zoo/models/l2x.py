"""L2X, learning to explain (Chen et al., 2018): a selector picks k features, a predictor sees
only those.

The selector produces one logit per feature θ ``[B, d]``; the latent is the top-k indicator
z = topk(θ) ``[B, d]`` made differentiable by the estimator of the latent layer; the predictor
sees the input masked by z. Three variants:

- :class:`L2XText`: BeerAdvocate reviews (as in the I-MLE and AIMLE experiments), tokens as
  features, MSE on an aspect score in [0, 1].
- :class:`L2XTabular`: the synthetic 10-d benchmarks of Chen et al. (XOR, orange skin,
  nonlinear additive, switch), features as features, 2-class cross-entropy.
- :class:`L2XImage`: MNIST, the 4×4 patches of a 28×28 image as features, cross-entropy.

With N latent samples per instance (training mode) the loss is summed over the samples and
averaged over the batch, as in the reference L2X script, using the actual batch size (the
reference reshaped with the configured batch size and crashed on the last partial batch).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..estimators import AIMLE, AdaptiveTarget, Estimator, Gumbel, expand_samples
from ..solvers import checks_enabled
from ._base import (
    ModelInputError,
    ZooModel,
    batch_total,
    check_sizes,
    check_tensor,
    example_generator,
    init_xavier_relu,
    mlp,
    unpack_batch,
)
from ._registry import register_model

_TIES = ("threshold", "exact")


def _default_l2x_estimator() -> Estimator:
    """The AIMLE authors' L2X recipe: central AIMLE, adaptive β₀ = 0, η = 1e-4, c = 1,
    Gumbel noise, τ = 1, one sample."""
    return AIMLE(
        target=AdaptiveTarget(initial_beta=0.0, target_norm=1.0, update_step=1e-4),
        noise=Gumbel(),
        samples=1,
        input_temperature=1.0,
        target_temperature=1.0,
        symmetric=True,
    )


def _check_ties(owner: str, ties: str) -> str:
    if ties not in _TIES:
        raise ValueError(f"{owner}: ties must be one of {list(_TIES)}, got {ties!r}")
    return ties


def _check_k(owner: str, k: int, features: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= features:
        raise ValueError(f"{owner}: k must be an integer in [1, {features}] ({what}), got {k!r}")
    return k


def _labels(model: str, labels: Any, batch: int, classes: int) -> Tensor:
    """Class indices ``[B]`` from integer labels ``[B]`` or one-hot/probability rows ``[B, C]``."""
    labels = check_tensor(
        model, "labels", labels, shape=f"[B] or [B, {classes}]", ndim=(1, 2), dtype="any"
    )
    if labels.shape[0] != batch:
        raise ModelInputError(
            f"{model}: expected {batch} labels (one per input), got shape {tuple(labels.shape)}"
        )
    if labels.dim() == 2:
        check_tensor(
            model,
            "one-hot labels",
            labels,
            shape=f"[B, {classes}]",
            ndim=2,
            dtype="any",
            sizes={1: classes},
            finite=True,
        )
        if checks_enabled() and labels.numel():
            top = labels.max(dim=1, keepdim=True).values  # [B, 1]
            single = ((labels == top).sum(dim=1) == 1) & (top.squeeze(1) > 0)  # [B]
            if not bool(single.all()):
                rows = (~single).nonzero().flatten().tolist()[:5]
                raise ModelInputError(
                    f"{model}: one-hot or probability labels need one largest, positive entry "
                    f"per row; rows {rows} have none or several (an all-zero row would read "
                    "as class 0)"
                )
        return labels.argmax(dim=1)
    check_tensor(model, "labels", labels, shape="[B]", ndim=1, dtype="int")
    if checks_enabled() and labels.numel() and bool(((labels < 0) | (labels >= classes)).any()):
        raise ModelInputError(
            f"{model}: labels must lie in [0, {classes - 1}], got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


def _classification_loss(logits: Tensor, labels: Tensor, samples: int) -> Tensor:
    """Cross-entropy summed over the N samples, averaged over the batch.

    ``logits [B·N, C]`` (sample-minor), ``labels [B]``.
    """
    per_row = F.cross_entropy(logits, expand_samples(labels, samples), reduction="none")
    return per_row.reshape(-1, samples).sum(dim=1).mean()


class _TokenSelector(nn.Module):
    """The GumbelSelector CNN of the L2X text experiment: token logits θ ``[B, L]``.

    Conv1d(D→F, kernel) + ReLU gives features; a global branch (max over time, Linear + ReLU)
    and a local branch (two Conv1d + ReLU) are concatenated (global first, tiled over time),
    passed through dropout, a 1×1 Conv1d + ReLU and a 1×1 Conv1d to one logit per token.
    """

    def __init__(self, embedding_dim: int, filters: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.features = nn.Conv1d(embedding_dim, filters, kernel_size, padding="same")
        self.global_dense = nn.Linear(filters, filters)
        self.local_1 = nn.Conv1d(filters, filters, kernel_size, padding="same")
        self.local_2 = nn.Conv1d(filters, filters, kernel_size, padding="same")
        self.dropout = nn.Dropout(dropout)
        self.merge = nn.Conv1d(2 * filters, filters, 1)
        self.logit = nn.Conv1d(filters, 1, 1)

    def forward(self, embedded: Tensor) -> Tensor:
        features = F.relu(self.features(embedded.transpose(1, 2)))  # [B, F, L]
        global_ = F.relu(self.global_dense(features.amax(dim=2)))  # [B, F]
        local = F.relu(self.local_2(F.relu(self.local_1(features))))  # [B, F, L]
        hidden = F.relu(self._merge(global_, local))  # [B, F, L]
        return self.logit(hidden).squeeze(1)  # [B, L]

    def _merge(self, global_: Tensor, local: Tensor) -> Tensor:
        """merge(dropout([global tiled over time; local])) without the concatenation.

        With W = [W_g, W_l]: W_g·dropout(g) + W_l·dropout(local) + b. Without dropout (eval,
        or p = 0) the global term is one ``[F, F]`` product per review instead of one per token.
        ``global_ [B, F]``, ``local [B, F, L]`` → ``[B, F, L]``.
        """
        filters = local.shape[1]
        weight = self.merge.weight  # [F, 2F, 1]
        merged = F.conv1d(self.dropout(local), weight[:, filters:], self.merge.bias)
        if self.dropout.training and self.dropout.p > 0:
            tiled = self.dropout(global_.unsqueeze(2).expand_as(local))  # [B, F, L]
            return merged + F.conv1d(tiled, weight[:, :filters])
        return merged + F.linear(global_, weight[:, :filters, 0]).unsqueeze(2)


@register_model("l2x_text")
class L2XText(ZooModel, tags=["l2x", "text-regression", "beeradvocate"]):
    """L2X on text (BeerAdvocate): select k tokens, regress an aspect score.

    Selector: the GumbelSelector CNN on frozen word embeddings → token logits θ ``[B, L]``.
    Latent: z = topk(θ) ``[B, L]``. Predictor: ŷ = σ(W₂ relu(W₁ (Σ_t z_t e_t) / k)) with the
    same frozen embeddings e (the sum over selected tokens is divided by k, not by the number
    of selected tokens, as in the reference). Loss: squared error summed over the N latent
    samples, averaged over the batch. All Conv1d/Linear layers use Xavier-uniform weights with
    the ReLU gain and zero biases.

    The embedding matrix ``[vocab_size, embedding_dim]`` (row 0 = PAD) is a frozen buffer,
    saved with the weights; it starts as random N(0, 1) vectors with a zero PAD row, and
    :meth:`set_embeddings` replaces it with pretrained word vectors.

    Args:
        vocab_size: rows of the embedding matrix (vocabulary + special tokens).
        embedding_dim: word-vector size (200 in the reference).
        max_length: review length of :meth:`example_inputs` (350 in the reference; the model
            accepts any length >= k).
        k: number of tokens selected.
        kernel_size: selector convolution width (the reference's ``-k``).
        filters: selector channels.
        hidden_dim: predictor hidden units (the reference's ``-H``).
        dropout: selector dropout.
        ties: top-k rule. ``"threshold"`` (default, the reference's): every token whose logit
            is >= the k-th largest is selected, so ties (e.g. identical logits of padding
            positions) can select more than k tokens. ``"exact"``: exactly k tokens, ties
            broken by the solver's deterministic rule.
        estimator: estimator name or config dict; ``None`` is the reference recipe (central
            AIMLE, adaptive target with β₀ = 0, η = 1e-4, c = 1, Gumbel noise, one sample).
    """

    def __init__(
        self,
        vocab_size: int = 20000,
        embedding_dim: int = 200,
        max_length: int = 350,
        k: int = 10,
        kernel_size: int = 3,
        filters: int = 100,
        hidden_dim: int = 250,
        dropout: float = 0.2,
        ties: str = "threshold",
        estimator: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_sizes(
            name,
            vocab_size=vocab_size,
            embedding_dim=embedding_dim,
            max_length=max_length,
            kernel_size=kernel_size,
            filters=filters,
            hidden_dim=hidden_dim,
        )
        self.k = _check_k(name, k, max_length, "at most max_length")
        self.max_length = max_length
        self.ties = _check_ties(name, ties)
        embedding = torch.randn(vocab_size, embedding_dim)
        embedding[0] = 0  # PAD
        self.embedding = nn.Buffer(embedding)
        self.selector = _TokenSelector(embedding_dim, filters, kernel_size, dropout)
        self.predictor = mlp([embedding_dim, hidden_dim, 1])
        init_xavier_relu(self)
        self.latent_layer = self._build_latent_layer(
            "topk", estimator, _default_l2x_estimator, k=k, ties=ties
        )

    def set_embeddings(self, matrix: Tensor) -> None:
        """Copy a word-vector matrix ``[vocab_size, embedding_dim]`` into the frozen buffer."""
        expected = tuple(self.embedding.shape)
        check_tensor(
            f"{type(self).__name__}.set_embeddings",
            "the embedding matrix",
            matrix,
            shape=f"[{expected[0]}, {expected[1]}]",
            ndim=2,
            sizes=dict(enumerate(expected)),
        )
        self.embedding.copy_(matrix)

    def _check_ids(self, token_ids: object, where: str) -> Tensor:
        ids = check_tensor(
            f"{type(self).__name__}.{where}",
            "token ids",
            token_ids,
            shape="[B, L]",
            ndim=2,
            dtype="int",
            nonempty=True,
        )
        if ids.shape[1] < self.k:
            raise ModelInputError(
                f"{type(self).__name__}.{where}: reviews must have at least k={self.k} tokens "
                f"(pad them), got shape {tuple(ids.shape)}"
            )
        vocab = self.embedding.shape[0]
        if checks_enabled() and ids.numel() and bool(((ids < 0) | (ids >= vocab)).any()):
            raise ModelInputError(
                f"{type(self).__name__}.{where}: token ids must lie in [0, {vocab - 1}] "
                f"(vocab_size={vocab}), got values in [{int(ids.min())}, {int(ids.max())}]"
            )
        return ids

    def token_scores(self, token_ids: Tensor) -> Tensor:
        """Selector logits θ ``[B, L]`` of token ids ``[B, L]``."""
        return self.selector(F.embedding(token_ids, self.embedding))

    def select(self, token_ids: Tensor) -> Tensor:
        """The token mask z ``[B·N, L]`` (``[B, L]`` MAP mask in eval mode)."""
        return self.latent_layer(self.token_scores(token_ids))

    def predict_masked(self, token_ids: Tensor, mask: Tensor) -> Tensor:
        """ŷ ``[R]`` from token ids ``[R, L]`` and a token mask ``[R, L]``."""
        return self._predict(F.embedding(token_ids, self.embedding), mask)

    def _predict(self, embedded: Tensor, mask: Tensor) -> Tensor:
        """ŷ ``[B·N]`` from embedded reviews ``[B, L, D]`` and their N masks ``[B·N, L]``.

        The pooled Σ_t z_t e_t / k of the N masks of a review are one ``[N, L] @ [L, D]``
        product with its embeddings (no ``[B·N, L, D]`` masked copy).
        """
        masks = mask.reshape(embedded.shape[0], -1, mask.shape[1])  # [B, N, L]
        pooled = torch.bmm(masks, embedded).flatten(0, 1) / self.k  # [B·N, D]
        return torch.sigmoid(self.predictor(pooled)).squeeze(-1)  # [B·N]

    def forward(self, token_ids: Tensor) -> Tensor:
        """Predicted scores: ``[B]`` in eval mode, ``[B·N]`` (sample-minor) in training mode."""
        if not torch.jit.is_scripting():
            self._check_ids(token_ids, "forward")
        embedded = F.embedding(token_ids, self.embedding)  # [B, L, D]
        mask = self.latent_layer(self.selector(embedded))  # [B·N, L]
        return self._predict(embedded, mask)

    def _targets(self, scores: Any, batch: int, where: str) -> Tensor:
        name = f"{type(self).__name__}.{where}"
        scores = check_tensor(name, "scores", scores, shape="[B]", ndim=1, finite=True)
        if scores.shape[0] != batch:
            raise ModelInputError(
                f"{name}: expected {batch} scores (one per review), got shape {tuple(scores.shape)}"
            )
        if checks_enabled() and scores.numel() and bool(((scores < 0) | (scores > 1)).any()):
            raise ModelInputError(
                f"{name}: aspect scores must lie in [0, 1] (the predictor ends in a sigmoid), "
                f"got values in [{float(scores.min()):.3g}, {float(scores.max()):.3g}]; "
                "rescale them, e.g. rating / 5"
            )
        return scores

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Σ_samples (ŷ − y)², averaged over the batch. ``batch = (token_ids [B, L], y [B])``."""
        self._warn_if_eval()
        token_ids, scores = unpack_batch(
            f"{type(self).__name__}.training_loss", batch, ("token_ids", "scores"), 2
        )
        ids = self._check_ids(token_ids, "training_loss")
        targets = self._targets(scores, ids.shape[0], "training_loss")
        predictions = self(ids)  # [B·N]
        samples = predictions.shape[0] // ids.shape[0]
        errors = (predictions - expand_samples(targets, samples)) ** 2  # [B·N]
        loss = errors.reshape(-1, samples).sum(dim=1).mean()
        return loss, {"mse": float(errors.detach().mean())}

    def evaluate_batch(self, batch: Any) -> dict[str, Tensor]:
        """Squared-error sums of the MAP-mask predictions: keys ``loss_sum`` (= ``mse_sum``),
        ``mse_sum`` and ``count``."""
        token_ids, scores = unpack_batch(
            f"{type(self).__name__}.evaluate_batch", batch, ("token_ids", "scores"), 2
        )
        with self._evaluating():
            ids = self._check_ids(token_ids, "evaluate_batch")
            targets = self._targets(scores, ids.shape[0], "evaluate_batch")
            squared = batch_total((self(ids) - targets) ** 2)
        return {"loss_sum": squared, "mse_sum": squared, "count": torch.tensor(ids.shape[0])}

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Random token ids ``[batch_size, max_length]``."""
        generator = example_generator()
        vocab = self.embedding.shape[0]
        ids = torch.randint(0, vocab, (batch_size, self.max_length), generator=generator)
        return (self._as_input(ids),)


@register_model("l2x_tabular")
class L2XTabular(ZooModel, tags=["l2x", "tabular", "synthetic"]):
    """L2X on the synthetic tabular benchmarks of Chen et al. (2018), 10-d inputs.

    Selector MLP x ``[B, d]`` → θ ``[B, d]`` (the feature-importance scores); latent
    z = topk(θ); predictor MLP on x ⊙ z → class logits ``[B, C]``. Loss: cross-entropy summed
    over the latent samples, averaged over the batch. Metrics include the median rank of the
    truly relevant features under θ (rank 1 = highest score) when a relevance mask is given.

    Args:
        input_dim: number of features d.
        k: number of features selected.
        selector_hidden: hidden sizes of the selector MLP (ReLU).
        predictor_hidden: hidden sizes of the predictor MLP (ReLU).
        num_classes: C.
        ties: top-k rule, ``"exact"`` (exactly k) or ``"threshold"`` (>= k-th largest).
        estimator: estimator name or config dict; ``None`` is the L2X recipe of :class:`L2XText`.
    """

    def __init__(
        self,
        input_dim: int = 10,
        k: int = 4,
        selector_hidden: Sequence[int] = (100, 100),
        predictor_hidden: Sequence[int] = (200, 200),
        num_classes: int = 2,
        ties: str = "exact",
        estimator: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_sizes(
            name,
            input_dim=input_dim,
            selector_hidden=selector_hidden,
            predictor_hidden=predictor_hidden,
            num_classes=num_classes,
        )
        self.input_dim = input_dim
        self.k = _check_k(name, k, input_dim, "at most input_dim")
        self.num_classes = num_classes
        self.ties = _check_ties(name, ties)
        self.selector = mlp([input_dim, *selector_hidden, input_dim])
        self.predictor = mlp([input_dim, *predictor_hidden, num_classes])
        init_xavier_relu(self)
        self.latent_layer = self._build_latent_layer(
            "topk", estimator, _default_l2x_estimator, k=k, ties=ties
        )

    def _check_features(self, x: object, where: str) -> Tensor:
        return check_tensor(
            f"{type(self).__name__}.{where}",
            "features",
            x,
            shape=f"[B, {self.input_dim}]",
            ndim=2,
            sizes={1: self.input_dim},
            nonempty=True,
            finite=True,
        )

    def feature_scores(self, x: Tensor) -> Tensor:
        """Selector logits θ ``[B, d]``: the feature-importance scores."""
        return self.selector(x)

    def select(self, x: Tensor) -> Tensor:
        """The feature mask z ``[B·N, d]`` (``[B, d]`` MAP mask in eval mode)."""
        return self.latent_layer(self.feature_scores(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: ``[B, C]`` in eval mode, ``[B·N, C]`` in training mode."""
        if not torch.jit.is_scripting():
            self._check_features(x, "forward")
        mask = self.select(x)  # [B·N, d]
        samples = mask.shape[0] // x.shape[0]
        return self.predictor(x.repeat_interleave(samples, dim=0) * mask)

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy. ``batch = (x [B, d], labels [B] or one-hot [B, C][, relevant])``."""
        self._warn_if_eval()
        where = f"{type(self).__name__}.training_loss"
        x, labels, _ = unpack_batch(where, batch, ("x", "labels", "relevant"), 2)
        x = self._check_features(x, "training_loss")
        targets = _labels(where, labels, x.shape[0], self.num_classes)
        logits = self(x)
        samples = logits.shape[0] // x.shape[0]
        loss = _classification_loss(logits, targets, samples)
        accuracy = (logits.argmax(1) == expand_samples(targets, samples)).double().mean()
        return loss, {"accuracy": float(accuracy)}

    def evaluate_batch(self, batch: Any) -> dict[str, Tensor]:
        """Sums of cross-entropy (``loss_sum``) and correct predictions (``accuracy_sum``) with
        the MAP mask; with a relevance mask ``[B, d]`` also ``median_rank_sum`` (under the
        selector's scores, over the rows with at least one relevant feature,
        ``median_rank_count``), ``selection_median_rank_sum`` (L2X's own protocol, the mask
        ranked with random ties, :func:`selection_median_rank`) and ``precision_sum`` (the
        fraction of selected features that are relevant). For the last two, features whose
        scores tie at the k-th place are chosen at random (seeded), not lowest index first as
        the MAP mask does: the relevant features are the lowest indices in the benchmarks, so
        a selector with constant scores would otherwise score perfectly."""
        where = f"{type(self).__name__}.evaluate_batch"
        x, labels, relevant = unpack_batch(where, batch, ("x", "labels", "relevant"), 2)
        with self._evaluating():
            x = self._check_features(x, "evaluate_batch")
            targets = _labels(where, labels, x.shape[0], self.num_classes)
            scores = self.feature_scores(x)  # [B, d]
            mask = self.latent_layer(scores)  # [B, d]
            logits = self.predictor(x * mask)
            metrics = {
                "loss_sum": batch_total(F.cross_entropy(logits, targets, reduction="none")),
                "accuracy_sum": (logits.argmax(1) == targets).sum(),
                "count": torch.tensor(x.shape[0]),
            }
            if relevant is not None:
                check_tensor(
                    where,
                    "relevance mask",
                    relevant,
                    shape=f"[B, {self.input_dim}]",
                    ndim=2,
                    dtype="any",
                    sizes={0: x.shape[0], 1: self.input_dim},
                )
                relevant = relevant.bool()
                ranks = median_rank(scores, relevant)  # [B]
                has_relevant = relevant.any(dim=1)
                rows = has_relevant.sum()
                if self.ties == "exact":
                    mask = _select_with_random_ties(scores, self.k, x)  # [B, d]
                selection_ranks = selection_median_rank(mask, relevant)  # [B]
                metrics["median_rank_sum"] = batch_total(ranks[has_relevant])
                metrics["median_rank_count"] = rows
                metrics["selection_median_rank_sum"] = batch_total(selection_ranks[has_relevant])
                metrics["selection_median_rank_count"] = rows
                hits = (mask.bool() & relevant).sum(1).to(scores.dtype)
                metrics["precision_sum"] = batch_total(hits / mask.sum(1).clamp_min(1))
        return metrics

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Standard-normal features ``[batch_size, d]``."""
        x = torch.randn(batch_size, self.input_dim, generator=example_generator())
        return (self._as_input(x),)


@functools.cache
def _tie_projection(width: int) -> Tensor:
    """A fixed standard-normal vector ``[width]`` (float64, CPU) for :func:`_tie_keys`."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(width, generator=generator, dtype=torch.float64)


def _tie_keys(features: Tensor) -> Tensor:
    """Pseudo-random keys ``[B, d]`` in [0, 1) drawn from each row's own values ``[B, d]``.

    ``frac(sin(s·(j + 1)·12.9898)·43758.5453)`` for feature j, with s a fixed random projection
    of the row: a function of the row alone, so a row gets the same tie order in any batch,
    and different rows get unrelated orders.
    """
    projection = _tie_projection(features.shape[1]).to(features.device)  # [d]
    row = features.detach().double() @ projection  # [B]
    position = torch.arange(1, features.shape[1] + 1, device=features.device, dtype=torch.float64)
    return torch.frac(torch.sin(row[:, None] * position * 12.9898).abs() * 43758.5453)


def _select_with_random_ties(scores: Tensor, k: int, features: Tensor) -> Tensor:
    """The k highest ``scores [B, d]`` of each row as a 0/1 mask, ties chosen at random by
    keys drawn from the row's ``features [B, d]`` (:func:`_tie_keys`: evaluations repeat and do
    not depend on how the rows are batched): a random order, then a stable sort."""
    shuffle = _tie_keys(features).argsort(dim=1)
    order = scores.gather(1, shuffle).argsort(dim=1, descending=True, stable=True)  # [B, d]
    chosen = shuffle.gather(1, order[:, :k])  # [B, k]
    return torch.zeros_like(scores).scatter_(1, chosen, 1.0)


def median_rank(scores: Tensor, relevant: Tensor) -> Tensor:
    """Median rank of the relevant features of each row under ``scores`` (rank 1 = highest).

    Features are ranked by descending score; tied features share their average rank (a
    selector whose scores are all equal ranks every feature (d + 1)/2, not the lowest indices
    first). For an even number of relevant features the two middle ranks are averaged; rows
    with none give NaN.

    Args:
        scores: ``[B, d]`` importance scores.
        relevant: ``[B, d]`` boolean mask of the truly relevant features.

    Returns:
        ``[B]`` median ranks.
    """
    features = scores.shape[1]
    values = scores.double() if not scores.is_floating_point() else scores
    above = (values.unsqueeze(1) > values.unsqueeze(2)).sum(dim=2)  # [B, d] strictly higher
    tied = (values.unsqueeze(1) == values.unsqueeze(2)).sum(dim=2)  # [B, d] itself included
    dtype = torch.promote_types(values.dtype, torch.float32)
    ranks = above.to(dtype) + (tied.to(dtype) + 1) / 2  # [B, d], average rank of a tie
    relevant = relevant.bool()
    relevant_ranks = torch.where(relevant, ranks, torch.full_like(ranks, float("inf")))
    sorted_ranks = relevant_ranks.sort(dim=1).values  # [B, d], relevant ranks first
    count = relevant.sum(dim=1, keepdim=True)  # [B, 1]
    low = ((count - 1).clamp_min(0) // 2).long()
    high = (count // 2).clamp_max(features - 1).long()
    median = (sorted_ranks.gather(1, low) + sorted_ranks.gather(1, high)).squeeze(1) / 2
    return torch.where(count.squeeze(1) > 0, median, torch.full_like(median, float("nan")))


def selection_median_rank(selected: Tensor, relevant: Tensor) -> Tensor:
    """Expected median rank of the relevant features when a selection is ranked at random.

    L2X's own evaluation (Chen et al., 2018) ranks the features by the 0/1 selection mask and
    breaks the ties uniformly at random: the s selected features take ranks 1..s in random
    order, the others s+1..d. With r relevant features of which a are selected, the j-th
    smallest relevant rank has the expectation (order statistics of a random subset)

        E[R₍ⱼ₎] = j·(s + 1)/(a + 1)                     for j ≤ a,
        E[R₍ⱼ₎] = s + (j − a)·(d − s + 1)/(r − a + 1)   for j > a,

    and the median of the r ranks, R₍₍ᵣ₊₁₎/₂₎ or the mean of R₍ᵣ/₂₎ and R₍ᵣ/₂₊₁₎, is linear in
    them, so this returns the exact mean of L2X's Monte-Carlo metric. A perfect selection of
    k = r features scores (r + 1)/2.

    Args:
        selected: ``[B, d]`` 0/1 (or boolean) selection mask.
        relevant: ``[B, d]`` boolean mask of the truly relevant features.

    Returns:
        ``[B]`` expected median ranks (NaN for rows without a relevant feature).
    """
    chosen = selected.bool()
    features = float(chosen.shape[1])
    size = chosen.sum(dim=1).double()  # s [B]
    count = relevant.sum(dim=1).double()  # r [B]
    hits = (chosen & relevant).sum(dim=1).double()  # a [B]

    def expected_rank(position: Tensor) -> Tensor:  # E[R₍ⱼ₎] for j = position [B]
        inside = position * (size + 1) / (hits + 1)
        outside = size + (position - hits) * (features - size + 1) / (count - hits + 1)
        return torch.where(position <= hits, inside, outside)

    low = torch.div(count + 1, 2, rounding_mode="floor")
    high = torch.div(count, 2, rounding_mode="floor") + 1
    median = (expected_rank(low) + expected_rank(high)) / 2
    nan = torch.full_like(median, float("nan"))
    dtype = torch.promote_types(selected.dtype, torch.float32)
    return torch.where(count > 0, median, nan).to(dtype)


@register_model("l2x_mnist")
class L2XImage(ZooModel, tags=["l2x", "image-classification", "mnist"]):
    """L2X on MNIST (Chen et al., 2018): select k of the p×p patches of an image.

    Selector CNN: Conv(1→c₁, 3) + ReLU → Conv(c₁→c₂, 3) + ReLU → average-pool over each
    p×p patch → 1×1 Conv → θ ``[B, P]`` with P = (S/p)² patches (49 for 28×28 and p = 4).
    Latent z = topk(θ) ``[B, P]``, upsampled to a pixel mask; predictor CNN on image ⊙ mask:
    two Conv(3) + ReLU + MaxPool(2) blocks → Linear + ReLU → Linear → class logits. Loss:
    cross-entropy summed over the latent samples, averaged over the batch.

    Args:
        image_size: S, the side of the square input (a multiple of ``patch_size`` and of 4).
        patch_size: p.
        k: number of patches selected.
        num_classes: C (2 for a digit pair such as 3 vs 8).
        channels: the two convolution widths [c₁, c₂] (shared by selector and predictor).
        hidden_dim: predictor hidden units.
        ties: top-k rule, ``"exact"`` or ``"threshold"``.
        estimator: estimator name or config dict; ``None`` is the L2X recipe of :class:`L2XText`.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 4,
        k: int = 4,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 128,
        ties: str = "exact",
        estimator: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_sizes(
            name,
            image_size=image_size,
            patch_size=patch_size,
            num_classes=num_classes,
            channels=channels,
            hidden_dim=hidden_dim,
        )
        if image_size % patch_size or image_size % 4:
            raise ValueError(
                f"{name}: image_size={image_size} must be a multiple of patch_size={patch_size} "
                "and of 4"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.patches_per_side = image_size // patch_size
        patches = self.patches_per_side**2
        self.k = _check_k(name, k, patches, f"{patches} patches")
        self.num_classes = num_classes
        self.ties = _check_ties(name, ties)
        if len(channels) != 2:
            raise ValueError(f"{name}: channels must be two widths [c1, c2], got {channels!r}")
        first, second = channels
        self.selector = nn.Sequential(
            nn.Conv2d(1, first, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(patch_size),
            nn.Conv2d(second, 1, 1),
        )
        self.features = nn.Sequential(
            nn.Conv2d(1, first, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = mlp([second * (image_size // 4) ** 2, hidden_dim, num_classes])
        init_xavier_relu(self)
        self.latent_layer = self._build_latent_layer(
            "topk", estimator, _default_l2x_estimator, k=k, ties=ties
        )

    def _check_images(self, images: object, where: str) -> Tensor:
        size = self.image_size
        checked = check_tensor(
            f"{type(self).__name__}.{where}",
            "images",
            images,
            shape=f"[B, 1, {size}, {size}] or [B, {size}, {size}]",
            ndim=(3, 4),
            sizes={-1: size, -2: size},
            nonempty=True,
            finite=True,
        )
        if checked.dim() == 4 and checked.shape[1] != 1:
            raise ModelInputError(
                f"{type(self).__name__}.{where}: expected single-channel images "
                f"[B, 1, {size}, {size}], got shape {tuple(checked.shape)}"
            )
        if checks_enabled() and bool(((checked < 0) | (checked > 1)).any()):
            raise ModelInputError(
                f"{type(self).__name__}.{where}: intensities must lie in [0, 1] (as in training), "
                f"got values in [{float(checked.min()):.3g}, {float(checked.max()):.3g}]; "
                "divide uint8 images by 255"
            )
        return checked

    def patch_scores(self, images: Tensor) -> Tensor:
        """Selector logits θ ``[B, P]`` of images ``[B, 1, S, S]``."""
        return self.selector(images).flatten(1)

    def pixel_mask(self, patch_mask: Tensor) -> Tensor:
        """Upsample a patch mask ``[R, P]`` to a pixel mask ``[R, 1, S, S]``."""
        side, patch = self.patches_per_side, self.patch_size
        grid = patch_mask.reshape(-1, 1, side, side)
        return grid.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)

    def classify_masked(self, images: Tensor, patch_mask: Tensor) -> Tensor:
        """Class logits ``[R, C]`` of images ``[R, 1, S, S]`` seen through ``patch_mask [R, P]``."""
        return self.classifier(self.features(images * self.pixel_mask(patch_mask)).flatten(1))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits: ``[B, C]`` in eval mode, ``[B·N, C]`` in training mode.

        ``images`` is ``[B, 1, S, S]`` (or ``[B, S, S]``), intensities in [0, 1].
        """
        if not torch.jit.is_scripting():
            self._check_images(images, "forward")
        if images.dim() == 3:
            images = images.unsqueeze(1)
        mask = self.latent_layer(self.patch_scores(images))  # [B·N, P]
        samples = mask.shape[0] // images.shape[0]
        return self.classify_masked(images.repeat_interleave(samples, dim=0), mask)

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy. ``batch = (images [B, 1, S, S], labels [B])``."""
        self._warn_if_eval()
        where = f"{type(self).__name__}.training_loss"
        images, labels = unpack_batch(where, batch, ("images", "labels"), 2)
        images = self._check_images(images, "training_loss")
        targets = _labels(where, labels, images.shape[0], self.num_classes)
        logits = self(images)
        samples = logits.shape[0] // images.shape[0]
        loss = _classification_loss(logits, targets, samples)
        accuracy = (logits.argmax(1) == expand_samples(targets, samples)).double().mean()
        return loss, {"accuracy": float(accuracy)}

    def evaluate_batch(self, batch: Any) -> dict[str, Tensor]:
        """Cross-entropy (``loss_sum``) and correct predictions (``accuracy_sum``) of the
        predictor on the MAP-masked images, and ``count``."""
        where = f"{type(self).__name__}.evaluate_batch"
        images, labels = unpack_batch(where, batch, ("images", "labels"), 2)
        with self._evaluating():
            images = self._check_images(images, "evaluate_batch")
            targets = _labels(where, labels, images.shape[0], self.num_classes)
            logits = self(images)
            return {
                "loss_sum": batch_total(F.cross_entropy(logits, targets, reduction="none")),
                "accuracy_sum": (logits.argmax(1) == targets).sum(),
                "count": torch.tensor(images.shape[0]),
            }

    def example_inputs(self, batch_size: int = 2) -> tuple[Tensor, ...]:
        """Uniform random images ``[batch_size, 1, S, S]`` in [0, 1]."""
        size = self.image_size
        images = torch.rand(batch_size, 1, size, size, generator=example_generator())
        return (self._as_input(images),)
