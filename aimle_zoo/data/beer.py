"""BeerAdvocate reviews for L2X: reviews, word vectors, annotations, subset precision.

Files (from the L2X data archive, originally Tao Lei's beer data), in one directory:

- ``reviews.aspect{a}.train.txt`` and ``reviews.aspect{a}.heldout.txt``: one review per line,
  ``"s0 s1 s2 s3 s4<TAB>tok tok ..."`` with five scores in [0, 1]; the target is ``s[a]``
  (conventionally 0 appearance, 1 aroma, 2 palate, 3 taste).
- ``review+wiki.filtered.200.txt``: word vectors, ``"word v1 ... vD"`` per line.
- ``annotations.json``: one JSON object per line with the tokens ``"x"`` and, under the keys
  ``"0"``, ``"1"``, ... (the aspect index as a string), lists of half-open token spans
  ``[start, end)`` rated as talking about that aspect. Other keys (e.g. ``"y"``) are ignored.

Parsing rules and where they differ from the reference code:

- Tokens are split on runs of whitespace after stripping the line end. The reference splits on
  single spaces, so its last token keeps the trailing newline (and usually has no vector).
- Blank lines are skipped; any other malformed line raises :class:`DatasetError` naming the
  file and line.
- The vocabulary holds the training tokens in order of first appearance from id 3, after
  ``PAD = 0``, ``START = 1`` (reserved, unused) and ``UNK = 2``. Held-out *and* annotation tokens
  outside it map to ``UNK`` (the reference maps unknown annotation tokens to ``PAD``, which then
  can never count as selected).
- Sequences are pre-padded to ``max_len`` (350) with ``PAD``; longer reviews keep their first
  ``max_len`` tokens (``keep="first"``, as the PyTorch reference) or their last
  (``keep="last"``, as Keras' ``pad_sequences``).
- Annotation spans are mapped through the same padding and truncation, so subset precision is
  aligned for long reviews too (the reference misaligns them). Spans reaching past the review
  are clipped to it; negative or reversed spans are errors.
- The embedding matrix has one row per vocabulary id (the reference adds one spare row); ids
  without a vector, and the three special ids, get zeros.
- The held-out file is split 50/50 into validation and test by seed with the rule of
  scikit-learn's ``train_test_split(test_size=0.5, random_state=seed)`` used by the reference.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ._common import DatasetError, check_choice, check_positive_int

PAD, START, UNK = 0, 1, 2
SPECIAL_TOKENS = ("<PAD>", "<START>", "<UNK>")
NUM_SCORES = 5
MAX_LEN = 350
WORD_VECTORS_FILE = "review+wiki.filtered.200.txt"
ANNOTATIONS_FILE = "annotations.json"

Keep = Literal["first", "last"]


def reviews_file(
    root: str | os.PathLike[str], aspect: int, part: Literal["train", "heldout"]
) -> Path:
    """Path of ``reviews.aspect{aspect}.{part}.txt`` under ``root``."""
    return Path(root) / f"reviews.aspect{aspect}.{part}.txt"


# ----------------------------------------------------------------------------- reviews


def read_reviews(path: str | os.PathLike[str]) -> tuple[list[list[str]], np.ndarray]:
    """Read a reviews file.

    Returns:
        The token lists (one per non-blank line) and the scores float32 ``[N, 5]``.

    Raises:
        DatasetError: the file is missing, not UTF-8, or a line lacks the TAB, does not have
            five scores in [0, 1], or has no tokens.
    """
    path = Path(path)
    token_lists: list[list[str]] = []
    scores: list[list[float]] = []
    for number, line in _lines(path):
        head, tab, text = line.partition("\t")
        where = f"{path}:{number}"
        if not tab:
            raise DatasetError(f"{where}: expected '<5 scores><TAB><tokens>', found no TAB")
        values = _parse_floats(head.split(), where, "scores")
        if len(values) != NUM_SCORES:
            raise DatasetError(f"{where}: expected {NUM_SCORES} scores, found {len(values)}")
        if not all(0.0 <= value <= 1.0 for value in values):
            raise DatasetError(f"{where}: scores must lie in [0, 1], found {values}")
        tokens = text.split()
        if not tokens:
            raise DatasetError(f"{where}: the review has no tokens")
        token_lists.append(tokens)
        scores.append(values)
    if not token_lists:
        raise DatasetError(f"{path} holds no reviews")
    return token_lists, np.asarray(scores, dtype=np.float32)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a UTF-8 text file (a byte-order mark is skipped) without their line
    end, numbered from 1."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                stripped = line.rstrip("\r\n")
                if stripped.strip():
                    yield number, stripped
    except FileNotFoundError as err:
        raise DatasetError(f"{path} not found") from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text ({err})") from err
    except OSError as err:
        raise DatasetError(f"cannot read {path} ({err})") from err


def _parse_floats(fields: Sequence[str], where: str, what: str) -> list[float]:
    try:
        if any("_" in text for text in fields):  # float() reads "0_1" as 1.0
            raise ValueError(f"digit separators in {[t for t in fields if '_' in t]}")
        values = [float(text) for text in fields]
    except ValueError as err:
        raise DatasetError(f"{where}: malformed {what} ({err})") from err
    if not all(math.isfinite(value) for value in values):
        raise DatasetError(f"{where}: {what} must be finite")
    return values


# ----------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id mapping with ``PAD = 0``, ``START = 1``, ``UNK = 2``; words from id 3."""

    tokens: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tokens[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise DatasetError(f"a vocabulary must start with {SPECIAL_TOKENS}")
        index = {token: i for i, token in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            raise DatasetError("vocabulary tokens must be unique")
        object.__setattr__(self, "index", index)

    @classmethod
    def from_token_lists(cls, token_lists: Sequence[Sequence[str]]) -> Vocabulary:
        """The words of ``token_lists`` in order of first appearance, after the specials."""
        seen = dict.fromkeys(SPECIAL_TOKENS)
        for tokens in token_lists:
            seen.update(dict.fromkeys(tokens))
        return cls(tuple(seen))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of ``tokens``; unknown tokens, and text spelling a special token such as
        ``"<PAD>"`` (a word of the review, not padding), map to ``UNK``."""
        special = len(SPECIAL_TOKENS)
        return [
            UNK if (word_id := self.index.get(token, UNK)) < special else word_id
            for token in tokens
        ]


def pad_sequences(
    sequences: Sequence[Sequence[int]], max_len: int = MAX_LEN, keep: Keep = "first"
) -> tuple[np.ndarray, np.ndarray]:
    """Pre-pad (with ``PAD``) and truncate id sequences to ``max_len``.

    Returns:
        ``ids`` int64 ``[N, max_len]`` and ``positions`` int64 ``[N, max_len]``: the index in the
        original sequence of the token in each slot, -1 for padding.
    """
    length = check_positive_int("max_len", max_len)
    check_choice("keep", keep, ("first", "last"))
    ids = np.full((len(sequences), length), PAD, dtype=np.int64)
    positions = np.full((len(sequences), length), -1, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        size = min(len(sequence), length)
        if size == 0:
            continue
        first = 0 if keep == "first" else len(sequence) - size
        ids[row, length - size :] = sequence[first : first + size]
        positions[row, length - size :] = np.arange(first, first + size)
    return ids, positions


# ----------------------------------------------------------------------------- word vectors


def read_word_vectors(
    path: str | os.PathLike[str], vocabulary: Vocabulary, *, dim: int | None = None
) -> np.ndarray:
    """Embedding matrix float32 ``[len(vocabulary), D]`` from a text word-vector file.

    Each line is a word and D floats; an optional word2vec header line ``"<count> <D>"`` is
    skipped. Only vocabulary words are kept (the first occurrence of a repeated word); rows
    without a vector are zero. ``dim`` checks D.

    Raises:
        DatasetError: the file is missing or empty, a line has a different number of values
            or a malformed float, or D differs from ``dim``.
    """
    path = Path(path)
    matrix: np.ndarray | None = None
    filled = np.zeros(len(vocabulary), dtype=bool)  # first occurrence of a word wins
    width = dim
    for number, line in _lines(path):
        fields = line.split()
        where = f"{path}:{number}"
        if matrix is None and len(fields) == 2 and all(text.isdigit() for text in fields):
            continue  # word2vec header
        if width is None:
            width = len(fields) - 1
            if width < 1:
                raise DatasetError(f"{where}: a word without vector values ({line.strip()!r})")
        if len(fields) != width + 1:
            raise DatasetError(
                f"{where}: expected a word and {width} values, found {len(fields) - 1} values"
            )
        if matrix is None:
            matrix = np.zeros((len(vocabulary), width), dtype=np.float32)
        word_id = vocabulary.index.get(fields[0])
        if word_id is None or word_id < len(SPECIAL_TOKENS) or filled[word_id]:
            continue
        matrix[word_id] = _parse_floats(fields[1:], where, "vector values")
        filled[word_id] = True
    if matrix is None:
        raise DatasetError(f"{path} holds no word vectors")
    return matrix


# ----------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class AnnotatedReview:
    """One review of ``annotations.json``: its tokens and half-open spans per aspect."""

    tokens: tuple[str, ...]
    spans: dict[int, tuple[tuple[int, int], ...]]


def read_annotations(path: str | os.PathLike[str]) -> list[AnnotatedReview]:
    """Read ``annotations.json`` (JSON lines; a single JSON array of objects is accepted too).

    ``"x"`` must be a non-empty list of token strings (a string is split on whitespace); each
    key made of digits is an aspect whose value is a list of ``[start, end]`` integer pairs with
    ``0 <= start <= end``. Ends past the review are clipped to its length.

    Raises:
        DatasetError: the file is missing or a record is malformed (names the line).
    """
    path = Path(path)
    lines = list(_lines(path))
    if lines and lines[0][1].lstrip().startswith("["):
        records = _json_array(path, "\n".join(text for _, text in lines))
    else:
        records = [(f"{path}:{number}", _json_line(path, number, text)) for number, text in lines]
    if not records:
        raise DatasetError(f"{path} holds no annotated reviews")
    return [_annotated_review(where, record) for where, record in records]


def _json_line(path: Path, number: int, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{number}: invalid JSON ({err})") from err


def _json_array(path: Path, text: str) -> list[tuple[str, object]]:
    """The items of a JSON array (``text`` starts with ``[``, so valid JSON is a list)."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: invalid JSON ({err})") from err
    return [(f"{path}[{i}]", item) for i, item in enumerate(items)]


def _annotated_review(where: str, record: object) -> AnnotatedReview:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, found {type(record).__name__}")
    tokens = record.get("x")
    if isinstance(tokens, str):
        tokens = tokens.split()
    if (
        not isinstance(tokens, list)
        or not tokens
        or not all(isinstance(token, str) for token in tokens)
    ):
        raise DatasetError(f"{where}: 'x' must be a non-empty list of token strings")
    spans: dict[int, tuple[tuple[int, int], ...]] = {}
    for key, value in record.items():
        if isinstance(key, str) and key.isdigit():
            spans[int(key)] = _spans(where, key, value, len(tokens))
    return AnnotatedReview(tokens=tuple(tokens), spans=spans)


def _spans(where: str, key: str, value: object, length: int) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise DatasetError(f"{where}: aspect {key!r} must map to a list of [start, end] pairs")
    pairs = []
    for pair in value:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(bound, int) and not isinstance(bound, bool) for bound in pair)
            or not 0 <= pair[0] <= pair[1]
        ):
            raise DatasetError(
                f"{where}: aspect {key!r} has span {pair!r}; expected [start, end] integers "
                "with 0 <= start <= end"
            )
        if pair[0] >= length and pair[1] > pair[0]:
            raise DatasetError(
                f"{where}: aspect {key!r} has span {pair!r}, which starts past the end of the "
                f"review's {length} tokens; the annotations do not match the review text"
            )
        pairs.append((min(pair[0], length), min(pair[1], length)))
    return tuple(pairs)


def annotation_dataset(
    annotations: Sequence[AnnotatedReview],
    vocabulary: Vocabulary,
    aspect: int,
    *,
    max_len: int = MAX_LEN,
    keep: Keep = "first",
) -> TensorDataset:
    """Encode annotated reviews for one aspect.

    Returns:
        A ``TensorDataset`` of ``(ids int64 [M, L], in_span bool [M, L])``: the padded token
        ids and, per slot, whether its token lies in an annotated span of ``aspect``.

    Raises:
        DatasetError: a review has no spans entry for ``aspect``.
    """
    for i, review in enumerate(annotations):
        if aspect not in review.spans:
            raise DatasetError(
                f"annotated review {i} has no spans for aspect {aspect} (it has "
                f"{sorted(review.spans)}); check the aspect index"
            )
    ids, positions = pad_sequences(
        [vocabulary.encode(review.tokens) for review in annotations], max_len, keep
    )
    in_span = np.zeros(ids.shape, dtype=bool)  # [M, L]
    for row, review in enumerate(annotations):
        for start, end in review.spans[aspect]:
            in_span[row] |= (positions[row] >= start) & (positions[row] < end)
    return TensorDataset(torch.from_numpy(ids), torch.from_numpy(in_span))


def subset_precision(
    selected: Tensor | np.ndarray,
    token_ids: Tensor | np.ndarray,
    in_span: Tensor | np.ndarray,
    k: int,
) -> float:
    """Subset precision of token selections (Chen et al., 2018), batched.

    With S_b the selected non-``PAD`` slots of review b:
    ``sum_b |S_b ∩ annotated_b| / sum_b max(|S_b|, k)``.

    Args:
        selected: ``[M, L]`` selection mask (non-zero = selected), e.g. the top-k mask.
        token_ids: ``[M, L]`` padded ids (to leave out ``PAD`` slots).
        in_span: ``[M, L]`` bool from :func:`annotation_dataset`.
        k: the number of tokens the model is asked to select.

    Returns:
        The precision in [0, 1] (multiply by 100 for the reported number).
    """
    count = check_positive_int("k", k)
    chosen = torch.as_tensor(selected) != 0
    ids = torch.as_tensor(token_ids)
    gold = torch.as_tensor(in_span).to(torch.bool)
    if chosen.dim() != 2 or chosen.shape != ids.shape or chosen.shape != gold.shape:
        raise DatasetError(
            f"selected {tuple(chosen.shape)}, token_ids {tuple(ids.shape)} and in_span "
            f"{tuple(gold.shape)} must all have the same shape [M, L]"
        )
    real = chosen & (ids != PAD)  # [M, L]
    correct = (real & gold).sum()
    denominator = real.sum(dim=1).clamp(min=count).sum()
    return float(correct) / float(denominator) if denominator > 0 else 0.0


# ----------------------------------------------------------------------------- the data set


def heldout_split(num_items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation and test indices of a 50/50 split of ``num_items`` held-out reviews.

    With ``p = RandomState(seed).permutation(n)`` and ``m = ceil(n / 2)``: test = ``p[:m]``,
    validation = ``p[m:]`` (the rule of scikit-learn's ``train_test_split(test_size=0.5)``).
    """
    count = check_positive_int("num_items", num_items, 2)
    permutation = np.random.RandomState(seed).permutation(count)
    num_test = math.ceil(0.5 * count)
    return permutation[num_test:], permutation[:num_test]


@dataclass(frozen=True)
class BeerAdvocate:
    """One aspect of BeerAdvocate, ready for L2X.

    Attributes:
        train, valid, test: ``TensorDataset`` of ``(ids int64 [N, L], score float32 [N])``.
        vocabulary: built from the training reviews.
        embeddings: float32 ``[len(vocabulary), D]``, or None if no word-vector file was read.
        annotations: ``TensorDataset`` of ``(ids int64 [M, L], in_span bool [M, L])`` for
            :func:`subset_precision`, or None if no annotation file was read.
        aspect: the aspect index.
    """

    train: TensorDataset
    valid: TensorDataset
    test: TensorDataset
    vocabulary: Vocabulary
    embeddings: Tensor | None
    annotations: TensorDataset | None
    aspect: int


def load_beer_advocate(
    root: str | os.PathLike[str],
    aspect: int,
    *,
    seed: int = 0,
    max_len: int = MAX_LEN,
    keep: Keep = "first",
    word_vectors: str | None = WORD_VECTORS_FILE,
    annotations: str | None = ANNOTATIONS_FILE,
) -> BeerAdvocate:
    """Load one aspect from the files in ``root`` (see the module docstring).

    Args:
        root: directory with the review, word-vector and annotation files.
        aspect: 0..4, the score column used as target and the annotation key.
        seed: seed of the validation/test split of the held-out file.
        max_len: padded length L.
        keep: which end of a long review to keep, ``"first"`` or ``"last"``.
        word_vectors: word-vector file name in ``root``, or None to skip it.
        annotations: annotation file name in ``root``, or None to skip it.
    """
    if isinstance(aspect, bool) or not isinstance(aspect, int) or not 0 <= aspect < NUM_SCORES:
        raise DatasetError(f"aspect must be an integer in 0..{NUM_SCORES - 1}, got {aspect!r}")
    directory = Path(root)
    train_tokens, train_scores = read_reviews(reviews_file(directory, aspect, "train"))
    heldout_tokens, heldout_scores = read_reviews(reviews_file(directory, aspect, "heldout"))
    vocabulary = Vocabulary.from_token_lists(train_tokens)

    def encode(token_lists: list[list[str]], scores: np.ndarray) -> TensorDataset:
        ids, _ = pad_sequences([vocabulary.encode(t) for t in token_lists], max_len, keep)
        return TensorDataset(torch.from_numpy(ids), torch.from_numpy(scores[:, aspect].copy()))

    heldout = encode(heldout_tokens, heldout_scores)
    if len(heldout_tokens) < 2:
        raise DatasetError(
            f"{reviews_file(directory, aspect, 'heldout')} holds {len(heldout_tokens)} review; "
            "the validation and test splits need at least 2"
        )
    valid_index, test_index = heldout_split(len(heldout_tokens), seed)
    embeddings = (
        torch.from_numpy(read_word_vectors(directory / word_vectors, vocabulary))
        if word_vectors is not None
        else None
    )
    annotated = (
        annotation_dataset(
            read_annotations(directory / annotations),
            vocabulary,
            aspect,
            max_len=max_len,
            keep=keep,
        )
        if annotations is not None
        else None
    )
    return BeerAdvocate(
        train=encode(train_tokens, train_scores),
        valid=_subset(heldout, valid_index),
        test=_subset(heldout, test_index),
        vocabulary=vocabulary,
        embeddings=embeddings,
        annotations=annotated,
        aspect=aspect,
    )


def _subset(dataset: TensorDataset, index: np.ndarray) -> TensorDataset:
    rows = torch.from_numpy(index)
    return TensorDataset(*(tensor[rows] for tensor in dataset.tensors))
