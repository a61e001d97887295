"""Command-line arguments as dataclasses, with YAML presets that command-line flags override.

``--config NAME`` loads ``training/configs/NAME.yaml`` shipped with the package (``paper``, ``demo``, ...);
``--config PATH`` loads any YAML file. Its keys are dataclass field names; flags given on the command line win.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.resources
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser

from convirt_hf.evaluation.tasks import ClassificationTask, parse_task

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
        raise ValueError(f"--config {path}: expected a mapping of argument names to values, "
                         f"got {type(values).__name__}")
    known = {field.name for cls in dataclass_types for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown argument(s) {unknown}; valid names are {sorted(known)}")
    return values


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows the script's docstring with its own line breaks (examples, lists), and each flag's default."""


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, description: str | None = None,
                    defaults: dict | None = None):
    """
    Parses `argv` into one instance of each dataclass, applying `defaults` (field name -> value), then `--config`,
    then the flags.

    Returns the dataclass instances followed by the preset path (or None).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, remaining = pre.parse_known_args(argv)
    parser = HfArgumentParser(dataclass_types, description=description, formatter_class=_HelpFormatter)
    parser.add_argument(
        "--config", default=None, help="a preset name (paper, demo, ...) or a YAML file; command-line flags override it"
    )
    for action in parser._actions:  # help texts are prose ("the 1% linear probe"): argparse %-formats them
        if action.help and "%(" not in action.help:
            action.help = action.help.replace("%", "%%")
    preset_path = None
    if defaults:
        parser.set_defaults(**defaults)
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
    """Raises ValueError naming the argument unless `value` is a finite number > 0 (or >= 0)."""
    # NaN compares False with everything, so `nan <= 0` would let it through; infinity is no usable setting either.
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not finite or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"--{name} must be {bound}{'' if finite else ' (a finite number)'}, got {value!r}")


def one_of(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"--{name} must be one of {list(choices)}, got {value!r}")


def configure_logging(level: int = logging.INFO) -> None:
    """The entry points' one log format: time, level, logger name, message."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level)


# What a user can fix from one line of text: bad arguments, missing or existing paths, a missing optional extra.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ImportError)


def run_cli(main: Callable[[], object], logger_name: str, errors: tuple[type[BaseException], ...] = ()) -> None:
    """Runs a script's `main()`; a user error (or one of `errors`) becomes one logged line and exit status 1."""
    try:
        main()
    except USER_ERRORS + tuple(errors) as error:
        logging.getLogger(logger_name).error("%s", error)
        sys.exit(1)


# --- checks shared by the evaluation scripts -------------------------------------------------------------------------

# Errors whose type a caller may rely on (run_cli reports all three as one line), rebuilt with the argument's name.
_NAMEABLE_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


@contextlib.contextmanager
def argument_errors(name: str):
    """
    Names `--name` in an error raised by a check of that argument's value, keeping the error's type.

    Library checks (a task spec, a repo id, an encoder spec) speak of their own parameter or of no name at all; the
    user needs to know which flag to fix.
    """
    try:
        yield
    except _NAMEABLE_ERRORS as error:
        if f"--{name}" in str(error):
            raise
        # a subclass may take other constructor arguments (MissingTokenError, ...): it becomes its base ValueError
        error_type = type(error) if type(error) in _NAMEABLE_ERRORS else ValueError
        raise error_type(f"--{name}: {error}") from error


def check_seeds(name: str, seeds: Sequence[int]) -> None:
    """At least one seed, each >= 0 (numpy's generators refuse negative seeds, and would only do so mid-run)."""
    if not seeds:
        raise ValueError(f"--{name} needs at least one seed")
    for seed in seeds:
        positive(name, seed, allow_zero=True)


def check_fraction(name: str, value) -> None:
    # Written so that NaN fails too: every comparison with NaN is False.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"--{name} must be in (0, 1], got {value!r}")


def check_transfer_grid(fractions: Sequence[float], tasks: Sequence[str]) -> list[ClassificationTask]:
    """
    Checks a transfer evaluation's grid (--fractions, --tasks: at least one of each, fractions in (0, 1], no task
    named twice, whose rows would merge into one summary) and returns the tasks parsed (`ClassificationTask`s).
    """
    if not fractions:
        raise ValueError("--fractions needs at least one label fraction, e.g. 0.01 0.1 1")
    for fraction in fractions:
        check_fraction("fractions", fraction)
    if not tasks:
        raise ValueError("--tasks needs at least one task")
    with argument_errors("tasks"):
        parsed = [parse_task(spec) for spec in tasks]
    names = [task.name for task in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"--tasks names a task twice: {names}")
    return parsed


def check_device(device: str) -> None:
    """A device this machine has, so that a typo or a missing GPU fails before any model is loaded."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {device!r} is not a torch device: expected cpu, cuda, cuda:<index> or mps "
                         f"({error})") from error
    if parsed.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (parsed.index or 0) >= available:
            raise ValueError(f"--device {device}: this machine has {available} CUDA device(s)")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise ValueError(f"--device {device!r}: expected cpu, cuda, cuda:<index> or mps")


def _nearest_existing(path: Path) -> Path | None:
    return next((candidate for candidate in (path, *path.parents) if candidate.exists()), None)


def check_folder_path(name: str, path: str | Path) -> None:
    """Refuses a folder path that cannot be used: it is a file, or a part of it that exists is a file."""
    folder = Path(path).expanduser()
    existing = _nearest_existing(folder)
    if existing is None or existing.is_dir():
        return
    if existing == folder:
        raise ValueError(f"--{name} {path} is a file: expected a folder")
    raise ValueError(f"--{name} {path}: {existing} is a file, so no folder can be created there")


def check_output_file(name: str, path: str | Path, overwrite: bool) -> None:
    """Refuses an output file that cannot be written, or that exists when `overwrite` (--overwrite) is not set."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"--{name} {path} is a folder: expected the path of a file to write")
    existing = _nearest_existing(target.parent)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"--{name} {path}: {existing} is a file, so no file can be written there")
    if target.exists() and not overwrite:
        raise ValueError(f"--{name} {path} exists: pass --overwrite to replace it")


def check_existing_file(name: str, path: str | Path) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--{name} {path}: no such file" + (" (it is a folder)" if file.is_dir() else ""))
    return file


def check_existing_folder(name: str, path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--{name} {path}: no such folder" + (" (it is a file)" if folder.is_file() else ""))
    return folder


def check_synthetic_corpus_arguments(cache_dir: str, synthetic_seed: int, synthetic_pretrain_size: int,
                                     uses_synthetic_corpus: bool = True) -> None:
    """The synthetic corpus's arguments, as training/pretrain.py checks them (it must find the same cached corpus)."""
    positive("synthetic_seed", synthetic_seed, allow_zero=True)
    positive("synthetic_pretrain_size", synthetic_pretrain_size)
    if uses_synthetic_corpus:  # the cache folder is only created when the corpus is needed
        check_folder_path("cache_dir", cache_dir)
