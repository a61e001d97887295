#!/usr/bin/env python
"""The linear-probe protocol of the paper: frozen image features, a linear head, 1/10/100% of the labels.

    python training/linear_probe.py --encoders outputs/convirt-demo random:resnet18          # the synthetic corpus
    python training/linear_probe.py --encoders runs/convirt-mimic resnet50.tv_in1k random:resnet50 \\
        --dataset /data/rsna-shards --tasks rsna=binary:pneumonia --output runs/rsna_linear.json

Each encoder (a ConVIRT folder, a timm model, or a random baseline; see `convirt_hf.evaluation.encoders`) is run
once over every split with no gradients; then, for each task, label fraction and seed, a logistic-regression head
(or, with ``--head tversky``, a Tversky projection head) is fitted on the fraction's rows (nested, stratified
subsets) with its L2 penalty chosen on the validation split,
and scored on the test split. Results (one row per model, task, fraction, seed and metric, plus mean and standard
deviation over seeds) are written as JSON and printed as a markdown table.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import timm
import torch

from convirt_hf.cli import (
    argument_errors,
    check_output_file,
    check_seeds,
    check_synthetic_corpus_arguments,
    check_transfer_grid,
    configure_logging,
    one_of,
    parse_arguments,
    positive,
    run_cli,
)
from convirt_hf.evaluation.corpora import check_classification_splits, classification_splits, corpus_folder
from convirt_hf.evaluation.encoders import check_image_encoder_spec, is_convirt_folder, load_image_encoder
from convirt_hf.evaluation.features import encode_splits
from convirt_hf.evaluation.linear_probe import HEADS, probe_inputs, run_linear_probe, summarise_runs
from convirt_hf.evaluation.reporting import format_probe_table, write_results

logger = logging.getLogger("convirt_hf.linear_probe")


@dataclass
class LinearProbeArguments:
    encoders: list[str] = field(
        default_factory=lambda: ["outputs/convirt-demo", "random:resnet18"],
        metadata={"help": "image encoders to compare: ConVIRT folders, timm specs (resnet50.tv_in1k), timm folders, "
                  "checkpoint files, random:<architecture>"},
    )
    dataset: str | None = field(default=None, metadata={"help": "a saved DatasetDict; default: the synthetic corpus"})
    train_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    tasks: list[str] = field(
        default_factory=lambda: ["findings", "category", "pneumonia", "fracture"],
        metadata={"help": "synthetic presets or '[name=]kind:class,...[@patient]' (kind: binary, multiclass, "
                  "multilabel)"},
    )
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={
        "help": "one label subset per seed; five, as the paper's means are"})
    architecture: str | None = field(default=None, metadata={"help": "timm architecture of checkpoint files"})
    image_size: int | None = field(default=None, metadata={"help": "input side for timm/random encoders (default: "
                                                             "the first ConVIRT folder's)"})
    eval_mode: str = field(default="pad_square", metadata={"help": "pad_square (the paper) or resize_crop"})
    head: str = field(default="linear", metadata={"help": "linear (logistic regression, the paper) or tversky (a "
                                                          "Tversky projection head over class prototypes)"})
    tversky_num_features: int = field(default=32, metadata={"help": "feature bank size of the tversky head"})
    tversky_steps: int = field(default=300, metadata={"help": "full-batch AdamW steps of the tversky head"})
    batch_size: int = 64
    num_workers: int = 0
    cache_dir: str = "~/.cache/convirt_hf"
    synthetic_seed: int = 0
    synthetic_pretrain_size: int = 3000
    output: str = "outputs/linear_probe.json"
    overwrite: bool = field(default=False, metadata={"help": "replace an existing --output file"})

    def __post_init__(self):
        # Every check runs here, before the corpus is generated or any encoder is built: a bad value must not cost
        # the feature extraction of the encoders listed before it.
        positive("batch_size", self.batch_size)
        positive("num_workers", self.num_workers, allow_zero=True)
        if self.image_size is not None:
            positive("image_size", self.image_size)
        one_of("eval_mode", self.eval_mode, ("pad_square", "resize_crop"))
        one_of("head", self.head, tuple(HEADS))
        positive("tversky_num_features", self.tversky_num_features)
        positive("tversky_steps", self.tversky_steps)
        if self.architecture is not None and not timm.is_model(self.architecture):
            raise ValueError(f"--architecture {self.architecture!r} is not a timm architecture")
        if not self.encoders:
            raise ValueError("--encoders needs at least one encoder")
        for spec in self.encoders:
            with argument_errors("encoders"):
                check_image_encoder_spec(spec, self.architecture)
        check_seeds("seeds", self.seeds)
        self.parsed_tasks = check_transfer_grid(self.fractions, self.tasks)
        check_synthetic_corpus_arguments(self.cache_dir, self.synthetic_seed, self.synthetic_pretrain_size,
                                         uses_synthetic_corpus=self.dataset is None)
        check_classification_splits(self.dataset, {"train": self.train_split, "validation": self.validation_split,
                                                   "test": self.test_split})
        check_output_file("output", self.output, self.overwrite)


def shared_image_size(encoders: list[str]) -> int | None:
    """The first ConVIRT folder's input size: baselines are compared at the resolution the model was trained at."""
    from convirt_hf import ConvirtConfig

    for spec in encoders:
        if is_convirt_folder(spec):
            return int(ConvirtConfig.from_pretrained(spec).image_size)
    return None


def head_options(args: LinearProbeArguments) -> dict | None:
    if args.head == "tversky":
        return {"num_features": args.tversky_num_features, "steps": args.tversky_steps}
    return None


def main(argv: list[str] | None = None) -> dict:
    (args, _preset) = parse_arguments((LinearProbeArguments,), argv, description=__doc__)
    configure_logging()
    folder = corpus_folder(args.dataset, args.cache_dir, args.synthetic_seed, args.synthetic_pretrain_size)
    records = classification_splits(folder, {"train": args.train_split, "validation": args.validation_split,
                                             "test": args.test_split})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    image_size = args.image_size or shared_image_size(args.encoders)
    for spec in args.encoders:
        encoder = load_image_encoder(spec, architecture=args.architecture, image_size=image_size)
        features = encode_splits(encoder, records, eval_mode=args.eval_mode, batch_size=args.batch_size,
                                 num_workers=args.num_workers, device=device)
        for task in args.parsed_tasks:
            results += run_linear_probe(task, probe_inputs(features, records, task.column), args.fractions, args.seeds,
                                        model_name=spec, data_name=str(folder), head=args.head,
                                        head_options=head_options(args))
    summary = summarise_runs(results)
    metadata = {"protocol": "linear_probe", "dataset": str(folder),
                "arguments": {k: v for k, v in asdict(args).items()}}
    write_results(args.output, metadata, results, summary, overwrite=args.overwrite)
    print(format_probe_table(summary))
    return {"metadata": metadata, "results": results, "summary": summary}


def cli() -> None:
    run_cli(main, "convirt_hf.linear_probe")


if __name__ == "__main__":
    cli()
