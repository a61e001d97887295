#!/usr/bin/env python
"""ConVIRT pretraining with accelerate.

    accelerate launch training/pretrain.py                       # offline demo on the built-in synthetic corpus
    accelerate launch training/pretrain.py --config paper --dataset /data/mimic-shards --output_dir runs/convirt
    python -m convirt_hf.training.pretrain --help                 # the same entry point once installed

With no arguments it generates (once, cached) the synthetic corpus, trains a small model on CPU or GPU, evaluates
image->image and text->image retrieval on the held-out retrieval set and writes a folder that
`ConvirtModel.from_pretrained` and `AutoModel.from_pretrained(..., trust_remote_code=True)` load.

Multi-process runs (`accelerate config`, or `accelerate launch --multi_gpu --num_processes N`, which on a machine
without GPUs starts N CPU processes with gloo) gather negatives from every process with gradients. Gradient
accumulation does NOT add negatives: each micro-batch is contrasted only with itself (and the other processes'
micro-batches), so raise the per-device batch size or the number of processes instead.

The run itself is `convirt_hf.pretraining.pretrain`: this script parses the flags, calls it and prints the result.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from convirt_hf.checkpointing import CheckpointReadError, CheckpointWriteError
from convirt_hf.cli import configure_logging, parse_arguments, run_cli
from convirt_hf.hub_errors import PublishError
from convirt_hf.pretraining import (
    DataArguments,
    ModelArguments,
    NonFiniteTrainingError,
    PretrainingArguments,
    ProcessGroupError,
    pretrain,
    summary_paragraph,
)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args, preset = parse_arguments(
        (ModelArguments, DataArguments, PretrainingArguments), argv, description=__doc__
    )
    configure_logging()
    metrics = pretrain(model_args, data_args, training_args, preset=preset)
    if PartialState().is_main_process:
        if "retrieval_table" in metrics:
            print(metrics["retrieval_table"])
        print(summary_paragraph(metrics, Path(training_args.output_dir).expanduser()))
    return metrics


def cli() -> None:
    run_cli(main, "convirt_hf.pretrain",
            (NonFiniteTrainingError, CheckpointWriteError, CheckpointReadError, ProcessGroupError, PublishError))


if __name__ == "__main__":
    cli()
