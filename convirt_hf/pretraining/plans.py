"""Sets of pretraining runs that a table compares: each run's folder, its arguments, and reuse only when it matches.

A table that compares, say, three temperatures over three pretraining seeds needs nine runs that differ in exactly
those two settings. `PlannedRun` holds one run's arguments (a preset, extra flags, and the run's own settings);
`reuse_problem` says why a finished folder cannot stand for it (its recorded training signature differs), and
`ensure_run` reuses, resumes or trains it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from convirt_hf.checkpointing import latest_checkpoint
from convirt_hf.cli import parse_arguments

from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .signature import signature_differences, training_signature

logger = logging.getLogger("convirt_hf.pretrain")

__all__ = ["PlannedRun", "ensure_run", "is_finished_run", "recorded_signature", "reuse_problem"]

ARGUMENT_CLASSES = (ModelArguments, DataArguments, PretrainingArguments)


def is_finished_run(folder: Path) -> bool:
    return (Path(folder) / "metrics.json").is_file()


def recorded_signature(folder: Path) -> dict | None:
    """The training signature a finished run recorded in its training_args.json (None when it has none)."""
    try:
        return json.loads((Path(folder) / "training_args.json").read_text()).get("signature")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class PlannedRun:
    """
    One pretraining run of a table: `preset` and `extra_flags` (a command-line string) as the user gave them, then
    `settings` (field name -> value) that the table sets for this run (tau, projection, seed, ...).
    """

    folder: Path
    preset: str
    extra_flags: str = ""
    settings: dict = field(default_factory=dict)

    def arguments(self, **run_settings) -> tuple[ModelArguments, DataArguments, PretrainingArguments, Path | None]:
        """The dataclasses `pretrain` takes for this run, with `run_settings` (output folder, resume) on top."""
        model_args, data_args, training_args, preset = parse_arguments(
            ARGUMENT_CLASSES, ["--config", self.preset, *shlex.split(self.extra_flags)])
        settings = {"output_dir": str(self.folder), **self.settings, **run_settings}
        replaced = [dataclasses.replace(arguments, **{key: value for key, value in settings.items()
                                                      if key in arguments.__dataclass_fields__})
                    for arguments in (model_args, data_args, training_args)]
        return (*replaced, preset)

    def signature(self) -> dict:
        model_args, data_args, training_args, _ = self.arguments()
        return training_signature(model_args, data_args, training_args)


def reuse_problem(folder: Path, planned: PlannedRun) -> list[str]:
    """Why the finished run in `folder` cannot stand for `planned` (empty when it can)."""
    return signature_differences(recorded_signature(folder), planned.signature())


def ensure_run(planned: PlannedRun, retrain_mismatches: bool = False) -> Path:
    """
    The finished run `planned` asks for: its folder reused when it holds a finished run with the same training
    signature, resumed when an interrupted one, trained otherwise. A finished run with another signature is trained
    again only with `retrain_mismatches` (the caller's --overwrite), else refused with the differences.
    """
    from .api import pretrain

    folder = planned.folder
    if is_finished_run(folder):
        problems = reuse_problem(folder, planned)
        if not problems:
            logger.info("reusing the finished run %s", folder)
            return folder
        if not retrain_mismatches:
            raise ValueError(f"{folder} holds a finished run trained with other settings ({'; '.join(problems[:4])}): "
                             "pass --overwrite to train it again")
        logger.info("training %s again: %s", folder, "; ".join(problems[:4]))
        run_settings: dict[str, bool | str] = {"overwrite_output_dir": True}
    elif latest_checkpoint(folder / "checkpoints") is not None:
        run_settings = {"resume": "latest"}
    else:
        # a run that stopped before its first checkpoint has nothing to keep: it is started over
        run_settings = {"overwrite_output_dir": folder.exists()}
    model_args, data_args, training_args, preset = planned.arguments(**run_settings)
    logger.info("pretraining %s (preset %s%s; %s)", folder, planned.preset,
                f", {planned.extra_flags}" if planned.extra_flags else "",
                ", ".join(f"{key} {value}" for key, value in planned.settings.items()))
    pretrain(model_args, data_args, training_args, preset=preset)
    return folder
