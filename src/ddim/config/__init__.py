"""Run configuration: the schema (plain frozen data, `schema`) and the files it is read from and
written to (packaged configs, our YAML, the official yml files: `files`)."""

from ddim.config.files import (
    OFFICIAL_DROPPED,
    OFFICIAL_FIXED,
    OFFICIAL_RENAMES,
    OFFICIAL_TRAINING,
    apply_overrides,
    dump_config,
    from_official_dict,
    load_config,
)
from ddim.config.schema import (
    CONFIG_NAMES,
    Config,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    SamplingConfig,
    TrainingConfig,
    sampling_differences,
)

__all__ = [
    "CONFIG_NAMES",
    "OFFICIAL_DROPPED",
    "OFFICIAL_FIXED",
    "OFFICIAL_RENAMES",
    "OFFICIAL_TRAINING",
    "Config",
    "DataConfig",
    "DiffusionConfig",
    "ModelConfig",
    "SamplingConfig",
    "TrainingConfig",
    "apply_overrides",
    "dump_config",
    "from_official_dict",
    "load_config",
    "sampling_differences",
]
