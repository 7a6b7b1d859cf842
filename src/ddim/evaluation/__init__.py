"""Evaluation as one stage: uint8 images scored against reference statistics, in two steps as in
EDM: `ref` turns a dataset into a stats file once; `calc` scores images (or a generator of
batches) against it, by FID and, where the reference keeps features, KID.

    inception      the network file, loaded; the legacy-TF resize and scaling; pool_3 features
    distances      the Fréchet distance and KID: pure functions of features and statistics
    stats_file     FidStats and its .npz: made, saved, loaded, validated, checked compatible
    references     the `ref` step, references by name (REFERENCES) made once into the cache, and
                   the command that remakes a file
    scoring        `compute_scores`, the one entry that scores images against a reference, and
                   the caution beside a score of few images
    pixel_metrics  cheap measures in pixel space, without Inception (pixel FD, precision/recall)

Inside the package a module calls another's functions through that module
(`inception.inception_features`), so a function replaced in its module is replaced for every
caller.
"""

from ddim.evaluation.distances import (
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    Kid,
    frechet_distance,
    kernel_inception_distance,
    mmd2_unbiased,
    statistics,
)
from ddim.evaluation.inception import (
    CONVENTION,
    FEATURE_DIM,
    inception_features,
    inception_path,
    load_inception,
    network_sha256,
    preprocess,
)
from ddim.evaluation.references import (
    REFERENCES,
    compute_reference,
    missing_features,
    ref_command,
    reference_file,
)
from ddim.evaluation.scoring import (
    FEW_IMAGES,
    Scores,
    compute_scores,
    few_images_caution,
    kid_from_features,
)
from ddim.evaluation.stats_file import (
    KID_FEATURES,
    FidStats,
    check_compatible,
    check_resolution,
    load_stats,
    save_stats,
    stats_from_features,
    stats_from_images,
    validate_stats,
)

__all__ = [
    "CONVENTION",
    "FEATURE_DIM",
    "FEW_IMAGES",
    "KID_FEATURES",
    "KID_SUBSETS",
    "KID_SUBSET_SIZE",
    "REFERENCES",
    "FidStats",
    "Kid",
    "Scores",
    "check_compatible",
    "check_resolution",
    "compute_reference",
    "compute_scores",
    "few_images_caution",
    "frechet_distance",
    "inception_features",
    "inception_path",
    "kernel_inception_distance",
    "kid_from_features",
    "load_inception",
    "load_stats",
    "missing_features",
    "mmd2_unbiased",
    "network_sha256",
    "preprocess",
    "ref_command",
    "reference_file",
    "save_stats",
    "statistics",
    "stats_from_features",
    "stats_from_images",
    "validate_stats",
]
