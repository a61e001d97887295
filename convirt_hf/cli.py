"""Command-line arguments as dataclasses, with YAML presets that command-line flags override.

``--config NAME`` loads ``training/configs/NAME.yaml`` shipped with the package (``paper``, ``demo``, ...);
``--config PATH`` loads any YAML file. Its keys are dataclass field names; flags given on the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from transformers import HfArgumentParser

logger = logging.getLogger(__name__)

# Through the import system: in a source checkout training/ is installed as convirt_hf.training by a path mapping.
PRESETS_DIR = Path(str(importlib.resources.files("convirt_hf.training") / "configs"))


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (``paper``) or a YAML path, as a path that exists."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    available = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise ValueError(f"--config {name_or_path!r}: no such YAML file or preset (presets: {', '.join(available)})")


def load_preset(name_or_path: str, dataclass_types: Sequence[type]) -> dict:
    """Reads a preset, checking that every key is a field of one of `dataclass_types`."""
    path = resolve_preset(name_or_path)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of argument names to values, got {type(values).__name__}")
    known = {field.name for cls in dataclass_types for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown argument(s) {unknown}; valid names are {sorted(known)}")
    return values


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, description: str | None = None):
    """
    Parses `argv` into one instance of each dataclass, applying `--config` first.

    Returns the dataclass instances followed by the preset path (or None).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, remaining = pre.parse_known_args(argv)
    parser = HfArgumentParser(dataclass_types, description=description)
    parser.add_argument(
        "--config", default=None, help="a preset name (paper, demo, ...) or a YAML file; command-line flags override it"
    )
    preset_path = None
    if known.config is not None:
        preset_path = resolve_preset(known.config)
        parser.set_defaults(**load_preset(known.config, dataclass_types))
    namespace = parser.parse_args(remaining)
    instances = []
    for cls in dataclass_types:
        names = {field.name for field in dataclasses.fields(cls) if field.init}
        instances.append(cls(**{name: getattr(namespace, name) for name in names}))
    return (*instances, preset_path)


def positive(name: str, value, allow_zero: bool = False) -> None:
    """Raises ValueError naming the argument unless `value` is > 0 (or >= 0)."""
    if value is None or (value < 0 if allow_zero else value <= 0):
        raise ValueError(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def one_of(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"--{name} must be one of {list(choices)}, got {value!r}")


# What a user can fix from one line of text: bad arguments, missing or existing paths, a missing optional extra.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError)


def run_cli(main: Callable[[], object], logger_name: str, errors: tuple[type[BaseException], ...] = ()) -> None:
    """Runs a script's `main()`; a user error (or one of `errors`) becomes one logged line and exit status 1."""
    try:
        main()
    except USER_ERRORS + tuple(errors) as error:
        logging.getLogger(logger_name).error("%s", error)
        sys.exit(1)
