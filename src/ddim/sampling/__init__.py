"""Sampling as one stage: a command's run decided once at its head and handed down.

    settings  where a run's settings are decided: SAMPLERS (the one table of samplers), a
              Sampler built over one explicit timestep array, SamplingSettings (samplers, batch,
              image shape) from the arguments and the config's defaults
    model     the checkpoint as an ε-model on a device in a precision, and its identity in records
    seeds     per-seed noise (image k depends on seed k alone) and batching
    runners   a Sampler applied to batches: images from seeds, encoding, reconstruction,
              interpolation strips, trajectory rows
    shards    the resumable shard files of a long run (images from seeds, latents of images),
              split across ranks
    inputs    the dataset images an image-to-image run starts from
    finite    a walk's end checked: NaN or infinity is an error naming the step that made it

The step itself (eq. 12) and the plans are tensor math in `ddim.diffusion.samplers`.
"""

from ddim.sampling.inputs import SELECTION, SelectedImages, select_images
from ddim.sampling.model import SamplingModel, load_sampling_model
from ddim.sampling.runners import (
    encode_images,
    interpolate_images,
    interpolate_latents,
    iterate_images,
    reconstruct_images,
    sample_seeds,
    trajectory_row,
)
from ddim.sampling.seeds import batches_of, seed_latents
from ddim.sampling.settings import (
    SAMPLERS,
    Sampler,
    SamplerEntry,
    SamplingSettings,
    build_sampler,
    sampling_settings,
)
from ddim.sampling.shards import (
    encode_to_shards,
    generate_to_shards,
    read_latent_shards,
    read_shards,
    shard_indices,
)

__all__ = [
    "SAMPLERS",
    "SELECTION",
    "Sampler",
    "SamplerEntry",
    "SamplingModel",
    "SamplingSettings",
    "SelectedImages",
    "batches_of",
    "build_sampler",
    "encode_images",
    "encode_to_shards",
    "generate_to_shards",
    "interpolate_images",
    "interpolate_latents",
    "iterate_images",
    "load_sampling_model",
    "read_latent_shards",
    "read_shards",
    "reconstruct_images",
    "sample_seeds",
    "sampling_settings",
    "seed_latents",
    "select_images",
    "shard_indices",
    "trajectory_row",
]
