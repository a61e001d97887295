#!/usr/bin/env python
"""The paper's fine-tuning protocol, through accelerate: an image encoder and a linear head trained on 1/10/100% of
the labels.

    accelerate launch training/finetune.py --encoder outputs/convirt-demo --task category --fraction 0.1
    accelerate launch training/finetune.py --encoder runs/convirt-mimic --dataset /data/rsna-shards \\
        --task rsna=binary:pneumonia --fraction 0.01 --seeds 0 1 2 3 4 --output_dir runs/rsna-ft-1pct

The recipe (Zhang et al., Section 4.2 and Appendix B): dropout 0.2 before the linear head; the head is first warmed
up for 200 steps with the encoder frozen (learning rate 1e-3), then every layer is trained with Adam (learning rate
1e-4, weight decay 1e-6, batch 64); after each epoch the validation metric decides: the learning rate is halved
after 3 epochs without improvement, training stops after 10, and the best-validation weights are the ones tested.
Inputs are zero-padded to a square and resized (the paper: 224 pixels). The label fraction's rows are the same
nested, stratified subsets as the linear probe's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from convirt_hf.cli import (
    argument_errors,
    check_folder_path,
    check_fraction,
    check_seeds,
    check_synthetic_corpus_arguments,
    configure_logging,
    parse_arguments,
    positive,
    run_cli,
)
from convirt_hf.data.transforms import AUGMENTATION_PRESETS, ConvirtEvalTransform, ConvirtTrainTransform
from convirt_hf.evaluation.corpora import check_classification_splits, classification_splits, corpus_folder
from convirt_hf.evaluation.encoders import check_image_encoder_spec, load_image_encoder
from convirt_hf.evaluation.linear_probe import summarise_runs
from convirt_hf.evaluation.reporting import format_probe_table, write_results
from convirt_hf.evaluation.scoring import headline_metric, primary_metric, score_predictions
from convirt_hf.evaluation.tasks import ClassificationTask, fraction_subsets, parse_task
from convirt_hf.modes import evaluating

logger = logging.getLogger("convirt_hf.finetune")


@dataclass
class FinetuneArguments:
    encoder: str = field(default="outputs/convirt-demo", metadata={"help": "a ConVIRT folder, timm spec, checkpoint "
                                                                   "file or random:<architecture>"})
    dataset: str | None = field(default=None, metadata={"help": "a saved DatasetDict; default: the synthetic corpus"})
    train_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    task: str = field(default="category", metadata={"help": "a synthetic preset or '[name=]kind:class,...[@patient]'"})
    fraction: float = field(default=1.0, metadata={"help": "share of the training labels (the paper: 0.01, 0.1, 1)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={
        "help": "one run (label subset and initialisation) per seed; five, as the paper's means are"})
    architecture: str | None = field(default=None, metadata={"help": "timm architecture of a checkpoint file"})
    image_size: int | None = field(default=None, metadata={"help": "input side (default: the encoder's)"})
    augmentation: str = field(default="none", metadata={"help": "none (the paper), light or paper (pretraining's)"})
    per_device_batch_size: int = 64
    learning_rate: float = 1e-4
    head_learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the head warm-up"})
    head_warmup_steps: int = field(default=200, metadata={"help": "steps training only the head, encoder frozen"})
    weight_decay: float = 1e-6
    dropout: float = 0.2
    max_epochs: int = 100
    plateau_patience: int = field(default=3, metadata={"help": "epochs without improvement before halving the lr"})
    early_stopping_patience: int = field(default=10, metadata={"help": "epochs without improvement before stopping"})
    mixed_precision: str = "no"
    num_workers: int = 0
    cache_dir: str = "~/.cache/convirt_hf"
    synthetic_seed: int = 0
    synthetic_pretrain_size: int = 3000
    output_dir: str = "outputs/finetune"
    overwrite_output_dir: bool = False

    def __post_init__(self):
        # Every check runs here, before the Accelerator starts, the output folder is created or the corpus generated.
        for name in ("per_device_batch_size", "learning_rate", "head_learning_rate", "max_epochs"):
            positive(name, getattr(self, name))
        for name in ("head_warmup_steps", "weight_decay", "plateau_patience", "early_stopping_patience",
                     "num_workers"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.image_size is not None:
            positive("image_size", self.image_size)
        check_fraction("fraction", self.fraction)
        # NaN fails too: every comparison with NaN is False
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout!r}")
        if self.augmentation != "none" and self.augmentation not in AUGMENTATION_PRESETS:
            raise ValueError(f"--augmentation must be none or one of {list(AUGMENTATION_PRESETS)}, got "
                             f"{self.augmentation!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        check_seeds("seeds", self.seeds)
        if self.architecture is not None and not timm.is_model(self.architecture):
            raise ValueError(f"--architecture {self.architecture!r} is not a timm architecture")
        with argument_errors("encoder"):
            check_image_encoder_spec(self.encoder, self.architecture)
        with argument_errors("task"):
            self.parsed_task = parse_task(self.task)
        check_synthetic_corpus_arguments(self.cache_dir, self.synthetic_seed, self.synthetic_pretrain_size,
                                         uses_synthetic_corpus=self.dataset is None)
        check_classification_splits(self.dataset, {"train": self.train_split, "validation": self.validation_split,
                                                   "test": self.test_split})
        check_folder_path("output_dir", self.output_dir)
        output = Path(self.output_dir).expanduser()
        if output.is_dir() and any(output.iterdir()) and not self.overwrite_output_dir:
            raise ValueError(f"--output_dir {output} is not empty: pass --overwrite_output_dir to replace its results")


class ImageClassifier(nn.Module):
    """
    An image encoder (pooled features), dropout and a linear head: the paper's transfer classifier.

    With `freeze_encoder` set the encoder runs without gradients and in eval mode (its BatchNorm statistics stay
    as they are), for the head warm-up.
    """

    def __init__(self, encoder: nn.Module, num_features: int, num_outputs: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_outputs)
        self.freeze_encoder = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            self.encoder.eval()
            with torch.no_grad():
                features = self.encoder(pixel_values)
        else:
            features = self.encoder(pixel_values)
        return self.head(self.dropout(features))


class LabelledViews(Dataset):
    """(view, target, row) for the kept rows of a record dataset."""

    def __init__(self, records, rows: np.ndarray, targets: np.ndarray, transform, seed: int, train: bool):
        self.records, self.rows, self.targets = records, rows, targets
        self.transform, self.seed, self.train = transform, seed, train
        self.epoch = 0  # set by the training loop before each pass

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = int(self.rows[index])
        image = self.records[row]["image"]
        if self.train:  # a view per (seed, pass, row): reproducible whatever the worker that draws it
            seed = int(np.random.default_rng([self.seed, self.epoch, row]).integers(2**62))
            view = self.transform(image, generator=torch.Generator().manual_seed(seed))
        else:
            view = self.transform(image)
        return view, torch.as_tensor(self.targets[index]), index


def loss_for(task: ClassificationTask, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if task.kind == "multiclass":
        return nn.functional.cross_entropy(logits.float(), targets.long())
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float().reshape(logits.shape))


def probabilities_for(task: ClassificationTask, logits: torch.Tensor) -> np.ndarray:
    logits = logits.float()
    probabilities = (logits.softmax(dim=-1) if task.kind == "multiclass" else logits.sigmoid()).cpu().numpy()
    return probabilities[:, 0] if task.kind == "binary" else probabilities


@torch.no_grad()
def predict(model, loader, accelerator, task) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities, row order and mean loss over a loader, gathered from every process (padding dropped)."""
    logits_all, targets_all, order_all = [], [], []
    with evaluating(model):
        for pixel_values, targets, order in loader:
            logits = model(pixel_values)
            logits, targets, order = accelerator.gather_for_metrics((logits, targets, order))
            logits_all.append(logits.float().cpu())
            targets_all.append(targets.cpu())
            order_all.append(order.cpu())
    logits, targets, order = torch.cat(logits_all), torch.cat(targets_all), torch.cat(order_all)
    loss = loss_for(task, logits, targets).item()
    return probabilities_for(task, logits), order.numpy(), loss


def build_loaders(records: dict, task: ClassificationTask, args: FinetuneArguments, image_size: int, seed: int):
    eval_transform = ConvirtEvalTransform(crop=image_size, mode="pad_square")
    train_transform = (eval_transform if args.augmentation == "none" else
                       ConvirtTrainTransform(output_size=image_size, ranges=AUGMENTATION_PRESETS[args.augmentation]))
    datasets, kept = {}, {}
    for name in ("train", "validation", "test"):
        targets, keep = task.targets(records[name][task.column], split=name)
        rows = np.flatnonzero(keep)
        if name == "train":
            subset = fraction_subsets(task.strata(targets), [args.fraction], seed,
                                      lead_with_each_stratum=task.kind != "multilabel")[args.fraction]
            rows, targets = rows[subset], targets[subset]
        kept[name] = (rows, targets)
        datasets[name] = LabelledViews(records[name], rows, targets, train_transform if name == "train" else
                                       eval_transform, seed, train=name == "train")
    generator = torch.Generator().manual_seed(seed)
    # a small fraction may hold fewer rows than a batch: keep every row rather than dropping the only batch
    train_loader = DataLoader(datasets["train"], batch_size=args.per_device_batch_size, shuffle=True,
                              generator=generator, num_workers=args.num_workers,
                              drop_last=len(datasets["train"]) > args.per_device_batch_size)
    eval_loaders = {name: DataLoader(datasets[name], batch_size=args.per_device_batch_size,
                                     num_workers=args.num_workers) for name in ("validation", "test")}
    return datasets["train"], train_loader, eval_loaders, kept


def finetune_one(records, task, args, seed, accelerator, output_dir: Path, data_name: str) -> list[dict]:
    set_seed(seed)
    encoder = load_image_encoder(args.encoder, architecture=args.architecture, seed=seed, image_size=args.image_size)
    model = ImageClassifier(encoder.model, encoder.num_features, task.num_outputs, args.dropout)
    train_views, train_loader, eval_loaders, kept = build_loaders(records, task, args, encoder.image_size, seed)
    # two optimizers, so the full training starts from fresh Adam moments, not the head warm-up's
    head_optimizer = torch.optim.Adam(model.head.parameters(), lr=args.head_learning_rate,
                                      weight_decay=args.weight_decay)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    model, head_optimizer, optimizer, train_loader, validation_loader, test_loader = accelerator.prepare(
        model, head_optimizer, optimizer, train_loader, eval_loaders["validation"], eval_loaders["test"])
    classifier = accelerator.unwrap_model(model)

    best_state, epochs = train_classifier(model, classifier, (head_optimizer, optimizer), train_views,
                                          (train_loader, validation_loader), kept["validation"][1], task, args, seed,
                                          accelerator)
    if best_state is not None:
        classifier.load_state_dict(best_state)
    metrics = score_test_split(model, test_loader, accelerator, task, kept["test"], records["test"])
    if accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in classifier.state_dict().items()},
                  str(output_dir / f"classifier_seed{seed}.safetensors"))
    return [
        {"model": args.encoder, "data": data_name, "task": task.name, "task_kind": task.kind,
         "protocol": "finetune", "fraction": args.fraction, "seed": seed, "num_train": len(kept["train"][0]),
         "epochs": epochs, "metric": metric, "value": value, "headline": metric == headline_metric(task)}
        for metric, value in metrics.items()
    ]


def train_classifier(model, classifier, optimizers, train_views, loaders, validation_targets, task, args, seed,
                     accelerator) -> tuple[dict | None, int]:
    """
    The head warm-up (`optimizers[0]`, encoder frozen), then the full training (`optimizers[1]`) epoch by epoch,
    each scored on the validation split, with the plateau rule and early stopping. Returns the best epoch's state
    (None when no epoch ran) and the number of full-training epochs.
    """
    head_optimizer, optimizer = optimizers
    train_loader, validation_loader = loaders
    step, passes, epoch, lr = 0, 0, 0, args.learning_rate
    best_score, best_state, stale_epochs = None, None, 0
    warming_up = args.head_warmup_steps > 0
    classifier.freeze_encoder = warming_up
    progress = tqdm(total=args.head_warmup_steps, desc=f"head warm-up (seed {seed})", leave=False,
                    disable=not warming_up or not accelerator.is_local_main_process)
    while epoch < args.max_epochs:
        train_views.epoch = passes
        passes += 1
        step, warm_up_ended = train_pass(model, classifier, train_loader, head_optimizer if warming_up else optimizer,
                                         task, accelerator, step, seed, progress if warming_up else None,
                                         args.head_warmup_steps)
        if warm_up_ended:
            warming_up = False
        if warming_up or warm_up_ended:
            continue  # warm-up passes are not the protocol's epochs, which count the full training only
        score, validation_loss = validation_score(model, validation_loader, accelerator, task, validation_targets)
        epoch += 1
        if best_score is None or score > best_score:
            best_score, stale_epochs = score, 0
            best_state = {k: v.detach().cpu().clone() for k, v in accelerator.get_state_dict(model).items()}
        else:
            stale_epochs += 1
            if args.plateau_patience and stale_epochs % args.plateau_patience == 0:
                lr *= 0.5
                for group in optimizer.param_groups:
                    group["lr"] = lr
        logger.info("seed %d epoch %d: validation %s %.4f (loss %.4f), lr %.2e", seed, epoch,
                    headline_metric(task), score, validation_loss, lr)
        if args.early_stopping_patience and stale_epochs >= args.early_stopping_patience:
            logger.info("seed %d: early stopping after %d epochs without improvement", seed, stale_epochs)
            break
    return best_state, epoch


def train_pass(model, classifier, train_loader, optimizer, task, accelerator, step: int, seed: int,
               warm_up: tqdm | None, warmup_steps: int) -> tuple[int, bool]:
    """
    One pass over the training data with `optimizer`. During the head warm-up (`warm_up`: its progress bar) the pass
    ends with the warm-up, which unfreezes the encoder. Returns the step count and whether the warm-up ended.
    """
    model.train()
    for pixel_values, targets, _ in train_loader:
        loss = loss_for(task, model(pixel_values), targets)
        if not torch.isfinite(loss):
            raise RuntimeError(f"the fine-tuning loss became {loss.item()} at step {step} (seed {seed}); lower "
                               "--learning_rate or use --mixed_precision no/bf16")
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if warm_up is not None:
            warm_up.update(1)
            if step >= warmup_steps:
                classifier.freeze_encoder = False
                warm_up.close()
                logger.info("seed %d: head warm-up done after %d steps; training every layer", seed, step)
                return step, True  # the full training's epochs start with a fresh pass
    return step, False


def validation_score(model, validation_loader, accelerator, task, targets) -> tuple[float, float]:
    """The validation split's primary metric (minus the loss where the metric is undefined) and its loss."""
    probabilities, order, validation_loss = predict(model, validation_loader, accelerator, task)
    score = primary_metric(task, score_predictions(task, targets[order], probabilities))
    return (-validation_loss if score is None else score), validation_loss


def score_test_split(model, test_loader, accelerator, task, kept_test, test_records) -> dict:
    """The test split's metrics (patient-level ones from the records' `patient_id` where the task has them)."""
    probabilities, order, _ = predict(model, test_loader, accelerator, task)
    test_rows, test_targets = kept_test
    patients = None
    if task.patient_level and "patient_id" in test_records.column_names:
        all_patients = test_records["patient_id"]
        patients = [all_patients[int(row)] for row in test_rows[order]]
    return score_predictions(task, test_targets[order], probabilities, patient_ids=patients)


def main(argv: list[str] | None = None) -> dict:
    (args, _preset) = parse_arguments((FinetuneArguments,), argv, description=__doc__)
    configure_logging()
    # the encoder takes no part in the head warm-up's backward pass, which DDP must be told
    accelerator = Accelerator(mixed_precision=args.mixed_precision,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    output_dir = Path(args.output_dir).expanduser()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    folder = corpus_folder(args.dataset, args.cache_dir, args.synthetic_seed, args.synthetic_pretrain_size)
    records = classification_splits(folder, {"train": args.train_split, "validation": args.validation_split,
                                             "test": args.test_split})
    results = []
    for seed in args.seeds:
        results += finetune_one(records, args.parsed_task, args, seed, accelerator, output_dir, str(folder))
    summary = summarise_runs(results)
    metadata = {"protocol": "finetune", "dataset": str(folder), "world_size": accelerator.num_processes,
                "arguments": asdict(args)}
    if accelerator.is_main_process:
        write_results(output_dir / "results.json", metadata, results, summary, overwrite=True)
        print(format_probe_table(summary))
    accelerator.wait_for_everyone()
    return {"metadata": metadata, "results": results, "summary": summary}


def cli() -> None:
    run_cli(main, "convirt_hf.finetune")


if __name__ == "__main__":
    cli()
