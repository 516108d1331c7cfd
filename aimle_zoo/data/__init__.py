"""Datasets of the model zoo: MNIST, NRI graph layout, L2X synthetic / MNIST / BeerAdvocate,
Warcraft-style shortest paths.

Generated data are deterministic by seed and cached as ``.npz`` files under
:func:`cache_root` (``$AIMLE_ZOO_CACHE`` or ``~/.cache/aimle_zoo``), written atomically; file
names encode the generation parameters. Bad files, bad caches and bad parameters raise
:class:`DatasetError` (a ``ValueError``) naming the file and what to do.
"""

from ._common import CACHE_ENV as CACHE_ENV, DatasetError as DatasetError, cache_root as cache_root
from .beer import (
    PAD as PAD,
    START as START,
    UNK as UNK,
    AnnotatedReview as AnnotatedReview,
    BeerAdvocate as BeerAdvocate,
    Vocabulary as Vocabulary,
    annotation_dataset as annotation_dataset,
    heldout_split as heldout_split,
    load_beer_advocate as load_beer_advocate,
    pad_sequences as pad_sequences,
    read_annotations as read_annotations,
    read_reviews as read_reviews,
    read_word_vectors as read_word_vectors,
    subset_precision as subset_precision,
)
from .l2x_synthetic import (
    SyntheticL2X as SyntheticL2X,
    feature_precision_recall as feature_precision_recall,
    feature_ranks as feature_ranks,
    generate_l2x_synthetic as generate_l2x_synthetic,
    l2x_synthetic_dataset as l2x_synthetic_dataset,
    median_rank as median_rank,
)
from .mnist import (
    MNIST as MNIST,
    MNIST_MD5 as MNIST_MD5,
    MNIST_MIRRORS as MNIST_MIRRORS,
    download_mnist_file as download_mnist_file,
    load_mnist as load_mnist,
    mnist_pair_dataset as mnist_pair_dataset,
    patch_mask_to_pixel_mask as patch_mask_to_pixel_mask,
    pixel_mask_to_patch_mask as pixel_mask_to_patch_mask,
    read_idx as read_idx,
    write_idx as write_idx,
)
from .nri import (
    GraphLayoutData as GraphLayoutData,
    directed_edges as directed_edges,
    generate_graph_layout as generate_graph_layout,
    load_graph_layout as load_graph_layout,
    load_graph_layout_npy as load_graph_layout_npy,
    prepare_graph_layout as prepare_graph_layout,
)
from .warcraft import (
    WarcraftData as WarcraftData,
    WarcraftDataset as WarcraftDataset,
    generate_warcraft as generate_warcraft,
    grid_shortest_paths as grid_shortest_paths,
    load_warcraft as load_warcraft,
    load_warcraft_npy as load_warcraft_npy,
)
