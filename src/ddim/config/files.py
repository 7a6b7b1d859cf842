"""Config files: the packaged configs, our YAML, and the official ermongroup/ddim yml files.

A config round-trips through YAML unchanged (`dump_config` / `load_config`).

Reading the official files. `load_config(path)` also reads ermongroup/ddim's `configs/*.yml` as
they are. Their extra keys are handled by explicit tables, never silently:

- `OFFICIAL_RENAMES` moves the `optim:` section into `training` (`optim.lr` → `training.lr`, ...);
- `OFFICIAL_FIXED` lists keys we accept only with the value our pipeline implements (e.g.
  `data.logit_transform: false`, `optim.optimizer: Adam`); any other value is an error;
- `OFFICIAL_DROPPED` lists keys that have no effect here (`training.n_epochs`, `data.num_workers`,
  ...), each with the note of why; they are dropped, wherever they are read: from an official file,
  from one of ours, or from the config an older checkpoint recorded. Any key in none of the tables
  is an error;
- a file with an `optim:` section is official, and where it is silent the official training code's
  behaviour applies (`OFFICIAL_TRAINING`: no warm-up, summed loss, no clipping, antithetic t).

Config text comes from outside, so it is read with a strict loader: YAML's safe subset, no
aliases (a config never needs them, and they make exponential "billion laughs" documents), at
most `MAX_DEPTH` levels of nesting, files of at most `MAX_CONFIG_BYTES`, and no key twice in one
mapping (PyYAML would keep the last silently: a second `training:` section would replace the
first whole), named with its line.

The packaged configs (`ddim/configs/<name>.yml`, names in `CONFIG_NAMES`) hold the official
values; the fields the official files leave out take the DDPM paper's values (Ho et al. 2020,
App. B and its released code): learning-rate warm-up of 5000 steps, the mean-reduced loss and
t drawn independently per image.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ddim.config.schema import CONFIG_NAMES, Config, _or_empty
from ddim.errors import DdimError

# Official key -> our key (see the module docstring).
OFFICIAL_RENAMES: dict[str, str] = {
    "optim.lr": "training.lr",
    "optim.grad_clip": "training.grad_clip",
    "optim.beta1": "training.adam_beta1",
    "optim.eps": "training.adam_eps",
    "optim.weight_decay": "training.weight_decay",
}
# Official keys accepted only with these values: the behaviour our pipeline implements.
OFFICIAL_FIXED: dict[str, Any] = {
    "data.logit_transform": False,
    "data.uniform_dequantization": False,
    "data.gaussian_dequantization": False,
    "data.rescaled": True,
    "optim.optimizer": "Adam",
    "optim.amsgrad": False,
}
# What the official training code does where its yml says nothing: no warm-up, the loss summed
# over pixels (`.sum(dim=(1, 2, 3))`), no clipping when `optim.grad_clip` is absent, and
# antithetic timesteps (t paired with T − 1 − t), and PyTorch's default initialisation.
OFFICIAL_TRAINING: dict[str, Any] = {
    "warmup": 0,
    "loss": "sum",
    "grad_clip": None,
    "antithetic": True,
    "init": "pytorch",
}
# Keys without effect here, and why: each is dropped when read.
OFFICIAL_DROPPED: dict[str, str] = {
    "training.n_epochs": "training stops at training.n_iters",
    "training.validation_freq": "validation is not part of this library",
    "training.log_step": "a run-time choice of the official CLI (ddim train --log-every)",
    "sampling.last_only": "sample commands write final images; trajectories: ddim trajectory",
    "sampling.ckpt_id": "a run-time choice of the official CLI (ddim sample --ckpt)",
    "data.category": "the official LSUN loader's folder; a dataset here is its path (data.path, "
                     "ddim train --data)",
    "data.num_workers": "decoding processes are a run-time choice, not a config's "
                        "(ddim train --workers, ddim fid --workers)",
}  # fmt: skip


MAX_DEPTH = 16  # our configs nest 3 deep (section, key, list)
MAX_CONFIG_BYTES = 1 << 20


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases or repeated keys, with a bound on nesting (the composer
    recurses)."""

    depth = 0

    def compose_node(self, parent, index):
        """Compose one node; an alias, or a node nested deeper than MAX_DEPTH, is an error."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed in configs "
                f"(line {event.start_mark.line + 1})", None,
            )  # fmt: skip
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep "
                f"(line {event.start_mark.line + 1})", None,
            )  # fmt: skip
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        """Construct a mapping; a key that appears twice in it is an error naming key and line."""
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice in one mapping (lines "
                        f"{seen[key]} and {line}); PyYAML would keep the last one", None,
                    )  # fmt: skip
                seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text from outside as plain values (strict loader); a bad document is a DdimError."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise DdimError(f"{source} is not valid YAML: {str(error).splitlines()[0]}") from None


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, two levels deep (section.key)."""
    flat = {}
    for section, values in d.items():
        values = _or_empty(values)
        if not isinstance(values, dict):
            raise DdimError(f"config section {section!r} must be a mapping, got {values!r}")
        flat.update({f"{section}.{k}": v for k, v in values.items()})
    return flat


def from_official_dict(d: dict[str, Any]) -> Config:
    """Build a config from a dict in the official ermongroup/ddim yml layout or ours (a file, or
    the config a checkpoint recorded): OFFICIAL_DROPPED keys dropped, official keys renamed."""
    ours: dict[str, dict[str, Any]] = {}
    if "optim" in d:  # the official layout: start from what the official code does
        ours["training"] = dict(OFFICIAL_TRAINING)
    for key, value in _flatten(d).items():
        if key in OFFICIAL_DROPPED:
            continue
        if key in OFFICIAL_FIXED:
            if value != OFFICIAL_FIXED[key]:
                raise DdimError(f"{key}={value!r} is not supported (only {OFFICIAL_FIXED[key]!r})")
            continue
        key = OFFICIAL_RENAMES.get(key, key)
        section, name = key.split(".", 1)
        ours.setdefault(section, {})[name] = value
    return Config.from_dict(ours)


def load_config(name_or_path: str | Path) -> Config:
    """Load a packaged config by name (`cifar10`, `tiny`, ...) or a yml file, ours or official."""
    text, source = _read_config_text(name_or_path)
    d = parse_yaml(text, source)
    if not isinstance(d, dict):
        raise DdimError(f"{source} does not hold a mapping of config sections")
    return from_official_dict(d)


def _read_config_text(name_or_path: str | Path) -> tuple[str, str]:
    """The YAML text of a packaged config or a file, and a name for it in error messages."""
    if str(name_or_path) in CONFIG_NAMES:
        package_file = resources.files("ddim") / "configs" / f"{name_or_path}.yml"
        return package_file.read_text(encoding="utf-8"), f"config {name_or_path!r}"
    path = Path(name_or_path)
    source = f"config file {str(path)!r}"
    if not path.is_file():
        raise DdimError(
            f"no config file {str(path)!r} and no packaged config of that name "
            f"(packaged: {', '.join(CONFIG_NAMES)})"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise DdimError(f"{source} is larger than {MAX_CONFIG_BYTES} bytes; not a config")
    try:
        return path.read_text(encoding="utf-8"), source
    except UnicodeDecodeError:
        raise DdimError(f"{source} is not UTF-8 text") from None


class _FlowListDumper(yaml.SafeDumper):
    """A YAML dumper that writes lists inline ([1, 2, 2, 2]) and mappings as blocks."""


_FlowListDumper.add_representer(
    list, lambda dumper, v: dumper.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)


def dump_config(config: Config) -> str:
    """The config as YAML text, in our layout; `load_config` reads it back to an equal config."""
    return yaml.dump(config.to_dict(), Dumper=_FlowListDumper, sort_keys=False)


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Return a copy of `config` with 'section.key=value' overrides (values parsed as YAML)."""
    d = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise DdimError(f"override {item!r} is not of the form section.key=value")
        section, dot, name = key.partition(".")
        if not dot or section not in d or name not in d[section]:
            raise DdimError(f"unknown key {key!r} in override {item!r}")
        d[section][name] = parse_yaml(text, f"cannot parse {key}: override {item[:60]!r}")
    return Config.from_dict(d)
