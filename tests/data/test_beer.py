"""BeerAdvocate files: parsing, vocabulary, padding, annotations, split and subset precision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aimle_zoo.data import (
    PAD,
    UNK,
    AnnotatedReview,
    DatasetError,
    Vocabulary,
    annotation_dataset,
    heldout_split,
    load_beer_advocate,
    pad_sequences,
    read_annotations,
    read_reviews,
    read_word_vectors,
    subset_precision,
)

TRAIN = [
    "0.6 0.7 0.8 0.9 1.0\tpours a hazy amber colour",
    "0.1 0.2 0.3 0.4 0.5\tsmells of citrus and pine",
    "",
    "1 0 0.5 0.25 0.75\tamber head , pine finish\r",
]
HELDOUT = [
    "0.5 0.5 0.5 0.5 0.5\tpours amber with unseen words",
    "0.2 0.4 0.6 0.8 1.0\tcitrus",
    "0.3 0.3 0.3 0.3 0.3\tpine pine pine",
    "0.9 0.9 0.9 0.9 0.9\tnovel",
]
VECTORS = ["2 3", "amber 1 2 3", "pine 0.5 0.5 0.5", "zzz 9 9 9", "amber 7 7 7"]
ANNOTATIONS = [
    {"x": ["pours", "amber", "mystery"], "y": [1, 1, 1, 1, 1], "0": [[0, 2]], "1": []},
    {"x": ["citrus", "and", "pine"], "0": [], "1": [[0, 1], [2, 3]], "sid": "b"},
]


def write_beer(root: Path, aspect: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"reviews.aspect{aspect}.train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / f"reviews.aspect{aspect}.heldout.txt").write_text("\n".join(HELDOUT) + "\n")
    (root / "review+wiki.filtered.200.txt").write_text("\n".join(VECTORS) + "\n")
    (root / "annotations.json").write_text("\n".join(json.dumps(a) for a in ANNOTATIONS) + "\n")
    return root


def test_a_byte_order_mark_is_not_part_of_the_first_score(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff0.1 0.2 0.3 0.4 0.5\tgolden\n".encode())
    tokens, scores = read_reviews(path)
    assert tokens == [["golden"]] and scores[0, 0] == np.float32(0.1)


def test_read_reviews_strips_line_ends(tmp_path: Path) -> None:
    root = write_beer(tmp_path)
    tokens, scores = read_reviews(root / "reviews.aspect1.train.txt")
    assert tokens[0] == ["pours", "a", "hazy", "amber", "colour"]
    assert tokens[2][-1] == "finish"  # no trailing "\r" or "\n"
    assert scores.shape == (3, 5) and scores.dtype == np.float32
    np.testing.assert_allclose(scores[2], [1, 0, 0.5, 0.25, 0.75])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0.1 0.2 0.3 0.4 0.5 no tab here", "found no TAB"),
        ("0.1 0.2 0.3 0.4\ttokens", "expected 5 scores, found 4"),
        ("0.1 0.2 x 0.4 0.5\ttokens", "malformed scores"),
        ("0.1 0.2 1.5 0.4 0.5\ttokens", r"must lie in \[0, 1\]"),
        ("0.1 0.2 nan 0.4 0.5\ttokens", "must be finite"),
        ("0.1 0.2 0_3 0.4 0.5\ttokens", "malformed scores .*digit separators"),  # float() reads 3
        ("0.1 0.2 0.3 0.4 0.5\t   ", "has no tokens"),
    ],
)
def test_malformed_review_lines(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "r.txt"
    path.write_text(f"0.1 0.2 0.3 0.4 0.5\tfine line\n{line}\n")
    with pytest.raises(DatasetError, match=message) as info:
        read_reviews(path)
    assert f"{path}:2" in str(info.value)


def test_missing_empty_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_reviews(tmp_path / "absent.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="holds no reviews"):
        read_reviews(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes(b"0 0 0 0 0\tcaf\xe9\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_reviews(tmp_path / "latin.txt")


def test_vocabulary_order_and_unknowns() -> None:
    vocabulary = Vocabulary.from_token_lists([["b", "a", "b"], ["c", "a"]])
    assert vocabulary.tokens == ("<PAD>", "<START>", "<UNK>", "b", "a", "c")
    assert vocabulary.encode(["a", "zzz", "c"]) == [4, UNK, 5]
    # text that spells a special token is a word of the review, not padding
    assert vocabulary.encode(["<PAD>", "a", "<START>", "<UNK>"]) == [UNK, 4, UNK, UNK]
    with pytest.raises(DatasetError, match="must start with"):
        Vocabulary(("a", "b"))
    with pytest.raises(DatasetError, match="must be unique"):
        Vocabulary((*vocabulary.tokens, "a"))


def test_pad_sequences_keeps_first_or_last_and_tracks_positions() -> None:
    sequences = [[5, 6], list(range(10, 16)), []]
    ids, positions = pad_sequences(sequences, max_len=4)
    assert ids.tolist() == [[PAD, PAD, 5, 6], [10, 11, 12, 13], [PAD] * 4]
    assert positions.tolist() == [[-1, -1, 0, 1], [0, 1, 2, 3], [-1] * 4]
    ids, positions = pad_sequences(sequences, max_len=4, keep="last")
    assert ids[1].tolist() == [12, 13, 14, 15] and positions[1].tolist() == [2, 3, 4, 5]
    with pytest.raises(DatasetError, match="keep must be one of"):
        pad_sequences(sequences, keep="middle")


def test_word_vectors(tmp_path: Path) -> None:
    root = write_beer(tmp_path)
    vocabulary = Vocabulary.from_token_lists([["pine", "amber", "hop"]])
    matrix = read_word_vectors(root / "review+wiki.filtered.200.txt", vocabulary)
    assert matrix.shape == (6, 3) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[vocabulary.index["amber"]], [1, 2, 3])  # first wins
    np.testing.assert_array_equal(matrix[vocabulary.index["pine"]], [0.5, 0.5, 0.5])
    assert not matrix[vocabulary.index["hop"]].any() and not matrix[:3].any()
    with pytest.raises(DatasetError, match="expected a word and 4 values, found 3"):
        read_word_vectors(root / "review+wiki.filtered.200.txt", vocabulary, dim=4)
    bad = tmp_path / "bad.txt"
    bad.write_text("amber 1 2 3\npine 1 2\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: expected a word and 3 values"):
        read_word_vectors(bad, vocabulary)
    bad.write_text("amber 1 2 3\npine 1 two 3\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: malformed vector values"):
        read_word_vectors(bad, vocabulary)
    bad.write_text("amber\npine 1 2\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1: a word without vector values \('amber'\)"):
        read_word_vectors(bad, vocabulary)
    bad.write_text("3 300\n\n")  # a word2vec header and nothing else
    with pytest.raises(DatasetError, match=r"bad.txt holds no word vectors"):
        read_word_vectors(bad, vocabulary)


def test_read_annotations_lines_and_array(tmp_path: Path) -> None:
    root = write_beer(tmp_path)
    reviews = read_annotations(root / "annotations.json")
    assert reviews[0].tokens == ("pours", "amber", "mystery")
    assert reviews[0].spans == {0: ((0, 2),), 1: ()}
    assert reviews[1].spans[1] == ((0, 1), (2, 3))
    as_array = tmp_path / "array.json"
    as_array.write_text(json.dumps(ANNOTATIONS, indent=1))
    assert read_annotations(as_array) == reviews
    as_text = tmp_path / "text.json"  # "x" as one whitespace-separated string
    as_text.write_text(json.dumps({**ANNOTATIONS[0], "x": " ".join(ANNOTATIONS[0]["x"])}))
    assert read_annotations(as_text) == reviews[:1]


def test_malformed_annotation_files(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_text("\n\n")
    with pytest.raises(DatasetError, match="holds no annotated reviews"):
        read_annotations(path)
    path.write_text('[{"x": ["a"]},\n')
    with pytest.raises(DatasetError, match=r"annotations.json: invalid JSON"):
        read_annotations(path)
    path.write_text('[{"x": ["a"]}, ["b"]]')
    with pytest.raises(DatasetError, match=r"annotations.json\[1\]: expected a JSON object"):
        read_annotations(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ('{"x": ["a"], "1": [[0, 1]]', "invalid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"1": [[0, 1]]}', "'x' must be a non-empty list"),
        ('{"x": ["a", 3], "1": []}', "'x' must be a non-empty list"),
        ('{"x": ["a"], "1": [[1, 0]]}', "0 <= start <= end"),
        ('{"x": ["a"], "1": [[-1, 1]]}', "0 <= start <= end"),
        ('{"x": ["a"], "1": [[0, 1.5]]}', "integers"),
        ('{"x": ["a"], "1": [0, 1]}', r"span 0"),
        ('{"x": ["a"], "1": {"0": 1}}', "list of"),
        ('{"x": ["a", "b"], "1": [[5, 9]]}', "starts past the end of the review's 2 tokens"),
        ('{"x": ["a", "b"], "1": [[2, 3]]}', "starts past the end of the review's 2 tokens"),
    ],
)
def test_malformed_annotations(tmp_path: Path, record: str, message: str) -> None:
    path = tmp_path / "annotations.json"
    path.write_text('{"x": ["ok"], "1": []}\n' + record + "\n")
    with pytest.raises(DatasetError, match=message) as info:
        read_annotations(path)
    assert f"{path}:2" in str(info.value)


def test_annotation_spans_follow_padding_and_truncation(tmp_path: Path) -> None:
    tokens = [f"w{i}" for i in range(12)]
    review = read_annotations_from(tmp_path, [{"x": tokens, "3": [[1, 3], [9, 40]]}])
    vocabulary = Vocabulary.from_token_lists([tokens[:6]])
    ids, in_span = annotation_dataset(review, vocabulary, 3, max_len=8).tensors
    # first 8 tokens kept, no padding; w6, w7 are unknown to the vocabulary
    assert ids[0].tolist() == [3, 4, 5, 6, 7, 8, UNK, UNK]
    assert in_span[0].tolist() == [False, True, True, False, False, False, False, False]
    ids, in_span = annotation_dataset(review, vocabulary, 3, max_len=8, keep="last").tensors
    kept = list(range(4, 12))  # w4..w11; spans 9..11 (clipped to the review)
    assert in_span[0].tolist() == [p in (9, 10, 11) for p in kept]
    ids, in_span = annotation_dataset(review, vocabulary, 3, max_len=15).tensors
    assert ids[0, :3].tolist() == [PAD] * 3 and not in_span[0, :3].any()
    assert in_span[0, 3:].tolist() == [p in (1, 2, 9, 10, 11) for p in range(12)]
    with pytest.raises(DatasetError, match="no spans for aspect 0"):
        annotation_dataset(review, vocabulary, 0)


def read_annotations_from(
    directory: Path, records: list[dict[str, object]]
) -> list[AnnotatedReview]:
    path = directory / "annotations.json"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return read_annotations(path)


def reference_precision(
    selected_tokens: list[set[int]], spans: list[list[tuple[int, int]]], k: int
) -> float:
    """Subset precision from original token positions, review by review (spec §6.1)."""
    correct = sum(
        sum(any(s <= p < e for s, e in review_spans) for p in chosen)
        for chosen, review_spans in zip(selected_tokens, spans, strict=True)
    )
    return correct / sum(max(len(chosen), k) for chosen in selected_tokens)


def test_subset_precision_matches_a_per_review_loop_for_long_reviews(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    max_len, k = 20, 4
    records, chosen_positions, all_spans = [], [], []
    for length in (5, 20, 33, 50, 8):
        tokens = [f"t{rng.integers(30)}" for _ in range(length)]
        spans = [(int(a), int(a) + int(rng.integers(1, 10))) for a in rng.integers(0, length, 2)]
        records.append({"x": tokens, "2": [list(span) for span in spans]})
        all_spans.append([(s, min(e, length)) for s, e in spans])
    reviews = read_annotations_from(tmp_path, records)
    vocabulary = Vocabulary.from_token_lists([[f"t{i}" for i in range(30)]])
    for keep in ("first", "last"):
        ids, in_span = annotation_dataset(
            reviews, vocabulary, 2, max_len=max_len, keep=keep
        ).tensors
        selected = torch.zeros_like(ids)
        chosen_positions = []
        for row, review in enumerate(reviews):
            length = len(review.tokens)
            window = (
                range(0, min(length, max_len))
                if keep == "first"
                else range(max(0, length - max_len), length)
            )
            picks = rng.choice(list(window), size=min(k + row % 3 - 1, len(window)), replace=False)
            chosen_positions.append({int(p) for p in picks})
            offset = max_len - len(window) - window.start
            for p in picks:
                selected[row, offset + p] = 1
        selected[:, 0] = torch.where(ids[:, 0] == PAD, 1, selected[:, 0])  # selected padding
        expected = reference_precision(chosen_positions, all_spans, k)
        assert subset_precision(selected, ids, in_span, k) == pytest.approx(expected)


def test_subset_precision_counts_and_errors() -> None:
    ids = torch.tensor([[PAD, 5, 6, 7], [8, 9, 10, 11]])
    in_span = torch.tensor([[False, True, True, False], [True, False, False, False]])
    selected = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]])
    # review 0: 2 real selections, 1 correct, denominator max(2, 3) = 3
    # review 1: 4 selections, 1 correct, denominator 4
    assert subset_precision(selected, ids, in_span, k=3) == pytest.approx(2 / 7)
    assert subset_precision(np.zeros((2, 4)), ids, in_span, k=3) == 0.0
    with pytest.raises(DatasetError, match="same shape"):
        subset_precision(selected[:, :3], ids, in_span, k=3)
    with pytest.raises(DatasetError, match="k must be"):
        subset_precision(selected, ids, in_span, k=0)


def test_heldout_split_halves() -> None:
    for count in (2, 7, 10):
        valid, test = heldout_split(count, seed=3)
        assert len(test) == math.ceil(count / 2) and len(valid) == count // 2
        assert sorted([*valid, *test]) == list(range(count))
    permutation = np.random.RandomState(5).permutation(9)
    valid, test = heldout_split(9, seed=5)
    np.testing.assert_array_equal(test, permutation[:5])
    np.testing.assert_array_equal(valid, permutation[5:])
    assert not np.array_equal(heldout_split(100, 0)[1], heldout_split(100, 1)[1])


def test_load_beer_advocate_end_to_end(tmp_path: Path) -> None:
    root = write_beer(tmp_path, aspect=1)
    data = load_beer_advocate(root, aspect=1, seed=0, max_len=6)
    vocabulary = data.vocabulary
    assert vocabulary.tokens[3:8] == ("pours", "a", "hazy", "amber", "colour")
    assert "finish" in vocabulary.index and "finish\r" not in vocabulary.index
    train_ids, train_y = data.train.tensors
    assert train_ids.shape == (3, 6) and train_ids.dtype == torch.int64
    torch.testing.assert_close(train_y, torch.tensor([0.7, 0.2, 0.0]))
    assert train_ids[0].tolist() == [PAD, 3, 4, 5, 6, 7]
    valid_index, test_index = heldout_split(4, 0)
    heldout_y = torch.tensor([0.5, 0.4, 0.3, 0.9])
    torch.testing.assert_close(data.valid.tensors[1], heldout_y[valid_index])
    torch.testing.assert_close(data.test.tensors[1], heldout_y[test_index])
    all_ids = torch.cat([data.valid.tensors[0], data.test.tensors[0]])
    assert (all_ids == UNK).sum() == 3 + 1  # "with", "unseen", "words" and "novel"
    assert data.embeddings is not None and data.embeddings.shape == (len(vocabulary), 3)
    assert data.annotations is not None
    annotated_ids, in_span = data.annotations.tensors
    assert annotated_ids[0, -3:].tolist() == [3, 6, UNK]  # unknown annotation token -> UNK
    assert in_span[1, -3:].tolist() == [True, False, True]
    bare = load_beer_advocate(root, aspect=1, word_vectors=None, annotations=None)
    assert bare.embeddings is None and bare.annotations is None
    (root / "reviews.aspect1.heldout.txt").write_text(HELDOUT[0] + "\n")
    with pytest.raises(DatasetError, match=r"heldout.txt holds 1 review; .* at least 2"):
        load_beer_advocate(root, aspect=1)
    with pytest.raises(DatasetError, match=r"aspect must be an integer in 0..4"):
        load_beer_advocate(root, aspect=5)
    with pytest.raises(DatasetError, match=r"reviews.aspect0.train.txt not found"):
        load_beer_advocate(root, aspect=0)
