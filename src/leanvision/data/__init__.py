"""Datasets as uint8 tensors: registered sets (digits, mnist, fashion-mnist, cifar10), image folders and .npz files.

Example:
    >>> from leanvision.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.input_shape, ds.num_classes, len(ds.train)
    ((1, 28, 28), 10, 1294)
"""

from . import cifar, digits, idx  # noqa: F401  (register the built-in datasets)
from .api import list_datasets, load_dataset
from .core import DATASETS, Dataset, DatasetSpec, ImageSet, resolve_data_dir
from .images import IMAGE_EXTENSIONS, load_image_files
from .normalize import normalizer
from .streaming import StreamingImageSet

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "StreamingImageSet",
    "list_datasets",
    "load_dataset",
    "load_image_files",
    "normalizer",
    "resolve_data_dir",
]
