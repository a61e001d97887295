"""The pretraining data: the corpus and its validation and retrieval sets, the loaders, and the views made on the
training device."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from convirt_hf.data.collate import ConvirtCollator
from convirt_hf.data.gpu_augment import BatchedAugmentation, BatchParams, DecodedImage, batch_seed
from convirt_hf.data.holdout import held_out_patients, patient_holdout, warn_if_patients_shared
from convirt_hf.data.pairs import EpochShuffleSampler, PairViews
from convirt_hf.data.transforms import (
    AUGMENTATION_PRESETS,
    ConvirtEvalTransform,
    ConvirtTrainTransform,
    default_eval_resize,
)
from convirt_hf.evaluation.zero_shot import load_retrieval_set
from convirt_hf.frozen_text import FrozenTextFeatures

from .arguments import DataArguments

logger = logging.getLogger("convirt_hf.pretrain")

DEFAULT_TRAIN_SPLITS = ("train", "pretrain")  # preprocessed corpora, then the synthetic corpus


def load_corpus(data_args: DataArguments, accelerator: Accelerator, seed: int):
    """
    Returns (train records, validation records, retrieval set or None, held-out validation patients or None).

    Without a validation split, about --validation_size rows (at most a tenth) are held out by patient
    (`convirt_hf.data.holdout.patient_holdout`, seeded): no patient has images on both sides, so the validation loss,
    the plateau schedule and the best model are chosen on patients the model never trained on.
    """
    from datasets import load_from_disk

    from convirt_hf.data.synthetic import SyntheticCorpusConfig, ensure_synthetic_corpus

    if data_args.dataset is None:
        config = SyntheticCorpusConfig(seed=data_args.synthetic_seed, num_pretrain=data_args.synthetic_pretrain_size)
        cache_dir = Path(data_args.cache_dir).expanduser()
        with accelerator.main_process_first():  # generated once, by the main process
            corpus_dir = ensure_synthetic_corpus(cache_dir, config)
    else:
        corpus_dir = Path(data_args.dataset).expanduser()
    corpus = load_from_disk(str(corpus_dir))
    if not hasattr(corpus, "keys"):
        corpus = {data_args.train_split or "train": corpus}
    if data_args.train_split is None:  # resolved here so that the saved arguments name the split actually used
        data_args.train_split = next((name for name in DEFAULT_TRAIN_SPLITS if name in corpus), DEFAULT_TRAIN_SPLITS[0])
    if data_args.train_split not in corpus:
        raise ValueError(f"--train_split {data_args.train_split!r} is not in {corpus_dir} (splits: {list(corpus)})")
    train = corpus[data_args.train_split]
    validation_patients = None
    if data_args.validation_split in corpus:
        validation = corpus[data_args.validation_split]
        warn_if_patients_shared({data_args.train_split: patient_ids(train),
                                 data_args.validation_split: patient_ids(validation)})
    else:
        train, validation, validation_patients = hold_out_patients(
            train, min(data_args.validation_size, len(train) // 10), seed)
        logger.info("no %r split: held out %d pairs of %d patients for validation (patient-level)",
                    data_args.validation_split, len(validation), len(validation_patients))
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))

    retrieval = None
    retrieval_source = data_args.retrieval_set or (str(corpus_dir) if data_args.dataset is None else None)
    if retrieval_source and retrieval_source != "none":
        retrieval = load_retrieval_set(retrieval_source)
    return train, validation, retrieval, validation_patients


def patient_ids(records) -> list[str | None]:
    return list(records["patient_id"]) if "patient_id" in records.column_names else [None] * len(records)


def hold_out_patients(records, size: int, seed: int):
    """About `size` rows of `records` held out by patient: (kept, held out, the held-out patient ids)."""
    ids = patient_ids(records)
    splits = patient_holdout(ids, {"validation": size / max(len(records), 1)}, seed)
    kept = [row for row, split in enumerate(splits) if split != "validation"]
    held = [row for row, split in enumerate(splits) if split == "validation"]
    if not held or not kept:
        raise ValueError(f"the training split's {len(records)} rows cannot spare a patient-level validation set of "
                         f"about {size} rows: give the corpus a validation split")
    return records.select(kept), records.select(held), held_out_patients(ids, splits).get("validation", [])


def build_dataloaders(train_records, validation_records, processor, data_args, args):
    eval_resize = data_args.eval_resize or default_eval_resize(data_args.image_size)
    collator = ConvirtCollator(processor.tokenizer, max_length=data_args.max_length)
    train_transform = ConvirtTrainTransform(output_size=data_args.image_size,
                                            ranges=AUGMENTATION_PRESETS[data_args.augmentation])
    if data_args.gpu_augmentation:  # the workers decode and draw each view's parameters; the device makes the views
        train_transform = DecodedImage(sampler=train_transform)
    # raw images: zero-padded into one batch with their true sizes, for BatchedAugmentation
    train_collator = ConvirtCollator(processor.tokenizer, max_length=data_args.max_length,
                                     raw_images=data_args.gpu_augmentation)
    cache_bytes = data_args.image_cache_mb * 2**20
    train_views = PairViews(train_records, train_transform, args.seed, data_args.text_mode, cache_bytes)
    validation_views = PairViews(
        validation_records, ConvirtEvalTransform(resize=eval_resize, crop=data_args.image_size), args.seed,
        data_args.text_mode, cache_bytes,
    )
    train_sampler = EpochShuffleSampler(len(train_views), seed=args.seed)
    loader_kwargs = dict(
        batch_size=args.per_device_batch_size,
        collate_fn=collator,
        num_workers=data_args.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=data_args.num_workers > 0,
        drop_last=True,  # ragged batches break the gather, and padding duplicates would be false negatives
    )
    # Own generators: creating an iterator otherwise draws a seed from the global RNG, and a run resumed mid-epoch
    # (one extra iterator) would then see different dropout masks from an uninterrupted one.
    train_loader = DataLoader(train_views, sampler=train_sampler, generator=torch.Generator().manual_seed(args.seed),
                              **{**loader_kwargs, "collate_fn": train_collator})
    validation_loader = DataLoader(
        validation_views, sampler=EpochShuffleSampler(len(validation_views), seed=args.seed, shuffle=False),
        generator=torch.Generator().manual_seed(args.seed), **loader_kwargs,
    )
    return train_loader, train_sampler, validation_loader


class DeviceAugmentation:
    """
    --gpu_augmentation: the training views of a raw batch (zero-padded decoded images and their `sizes`) made on the
    training device by `BatchedAugmentation`, with the --augmentation preset's ranges (those of the CPU path's
    `ConvirtTrainTransform`).

    Batches from the training loaders carry each image's own parameters (`augmentation`), drawn in the data loader
    from the row's (seed, epoch, row) generator as the CPU path draws them: a view is then the same whatever batch
    or process it lands in, and after a resume. A batch without them gets a draw from one device generator, re-seeded
    for every micro-batch from (seed, epoch, micro-batch index within the epoch, process index) only.
    """

    def __init__(self, data_args, args, accelerator):
        self.augment = BatchedAugmentation(output_size=data_args.image_size,
                                           ranges=AUGMENTATION_PRESETS[data_args.augmentation],
                                           channels_last=args.channels_last)
        self.generator = torch.Generator(device=accelerator.device)
        self.seed, self.process_index = args.seed, accelerator.process_index

    def __call__(self, batch: dict, epoch: int, batch_index: int) -> dict:
        params = batch.pop("augmentation", None)
        if params is None:
            self.generator.manual_seed(batch_seed(self.seed, epoch, batch_index, self.process_index))
        batch["pixel_values"] = self.augment(batch["pixel_values"], sizes=batch.pop("sizes"), generator=self.generator,
                                             params=params)
        return batch


def move_batch(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """The batch's tensors (and augmentation parameters) on `device`; other entries (ids) are left out."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()
             if torch.is_tensor(value) or isinstance(value, BatchParams)}
    if channels_last:
        moved["pixel_values"] = moved["pixel_values"].contiguous(memory_format=torch.channels_last)
    return moved


def model_inputs(batch: dict, text_features: FrozenTextFeatures | None) -> dict:
    """The forward's inputs: token ids, or the pooled features of a frozen text tower computed once per sentence."""
    if text_features is None:
        return {"pixel_values": batch["pixel_values"], "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"]}
    return {"pixel_values": batch["pixel_values"],
            "text_pooler_output": text_features(batch["input_ids"], batch["attention_mask"])}
