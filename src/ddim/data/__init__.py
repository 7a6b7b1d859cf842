"""Images in: datasets read as uint8, decoded once, served as training batches.

    pixels    the one conversion between uint8 and the model's [-1, 1]; fitting images to a size
    datasets  folders, zips, CIFAR-10 batches and .npz files as uint8 RGB `ImageDataset`s
    named     datasets by name (`cifar10`), fetched and unpacked into the cache once
    cache     decode a whole dataset once into one uint8 tensor, cached on disk
    batches   endless, reproducible, resumable, DDP-sharded [-1, 1] training batches
    shapes    a procedural dataset that ships with the package (no download)
"""

from ddim.data.batches import epoch_order, infinite_batches
from ddim.data.cache import load_all
from ddim.data.datasets import (
    SELECTION,
    ImageDataset,
    load_image_files,
    open_dataset,
    spread_indices,
    take_images,
)
from ddim.data.named import is_dataset_name, named_dataset_folder
from ddim.data.pixels import fit_image, to_model_range, to_uint8

__all__ = [
    "SELECTION",
    "ImageDataset",
    "epoch_order",
    "fit_image",
    "infinite_batches",
    "is_dataset_name",
    "load_all",
    "load_image_files",
    "named_dataset_folder",
    "open_dataset",
    "spread_indices",
    "take_images",
    "to_model_range",
    "to_uint8",
]
