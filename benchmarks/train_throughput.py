#!/usr/bin/env python
"""Training and inference throughput of ConVIRT, against the transformers dual-encoder baseline, in one run.

    python benchmarks/train_throughput.py                      # on the GPU: batch 256, 224 px, text length 64
    python benchmarks/train_throughput.py --smoke              # tiny, on the CPU, under a minute (a test runs it)
    python benchmarks/train_throughput.py --cpu_demo           # the default run (make pretrain): s/step and its split

Four measurements on the same device, in one process:

(a) ``hf_dual_encoder``: transformers' `VisionTextDualEncoderModel` (a `TimmWrapperModel` ResNet-50 and BERT-base),
    bf16 autocast, fused AdamW, tensors already on the device: the Hugging Face way to train such a model;
(b) ``convirt_model_only``: this project's `ConvirtModel` + `ConvirtLoss` step (ResNet-50, BERT-base with embeddings
    and 6 layers frozen, max pooling, MLP heads), bf16, channels_last, fused AdamW, `torch.compile` when asked,
    tensors already on the device;
(c) ``convirt_end_to_end``: `training/pretrain.py` itself, reading preprocessed 256 px shards (the synthetic corpus
    by default), decoding, augmenting (on the GPU with `--gpu_augmentation`), sampling and tokenising sentences with
    dynamic padding; samples/s from its own log after the warm-up steps;
(d) ``convirt_inference``: image embeddings for retrieval from the same shards (decode, evaluation view, encoder).

``--cpu_demo`` measures the default run instead (`make pretrain`: the demo recipe, on the CPU): the real training
loop's seconds per step and CPU threads, and the split of a step into data (loading, decoding, sentence sampling,
tokenising, augmentation), image tower (forward and backward, projection head included), text side (tower or
frozen-feature cache, projection head, forward and backward), loss and optimizer, from the same components timed one
phase at a time.

For (a) and (b) it counts FLOPs per sample (`torch.utils.flop_counter`) and reports MFU against the device's measured
bf16 matmul peak, and the peak memory. Results are printed as a table with ratios to (a) and written as JSON.
Timings are measured, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

logger = logging.getLogger("convirt_hf.benchmark")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, device: torch.device, steps: int, warmup: int) -> float:
    """Seconds per call of `step` after `warmup` calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def measured_matmul_peak(device: torch.device, size: int, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul in `dtype`: the denominator of MFU (a measured, not a datasheet, peak)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = time_steps(lambda: a @ b, device, steps=10, warmup=3)
    return 2 * size**3 / seconds


def flops_per_sample(step, batch_size: int) -> float:
    """FLOPs of one training step (forward and backward) per sample, counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / batch_size


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def text_config(smoke: bool):
    from transformers import BertConfig

    if smoke:
        return BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128)
    return BertConfig()  # BERT-base, as ClinicalBERT


def fake_text(batch_size: int, seq_len: int, vocab_size: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 % vocab_size, vocab_size, (batch_size, seq_len), generator=generator).to(device)
    return ids, torch.ones_like(ids)


def bench_hf_dual_encoder(args, device, images, ids, mask) -> dict:
    from transformers import BertModel, TimmWrapperConfig, TimmWrapperModel, VisionTextDualEncoderModel

    vision_config = TimmWrapperConfig(architecture=args.image_model, num_classes=0)
    vision = TimmWrapperModel(vision_config)
    vision_config.hidden_size = vision.timm_model.num_features  # what the dual encoder projects from
    model = VisionTextDualEncoderModel(vision_model=vision, text_model=BertModel(text_config(args.smoke))).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    use_bf16 = not args.fp32

    def step():
        with autocast(device, use_bf16):
            loss = model(input_ids=ids, attention_mask=mask, pixel_values=images, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _measure("hf_dual_encoder", step, args, device)


def convirt_model(args, device):
    from convirt_hf import ConvirtConfig, ConvirtModel

    config = ConvirtConfig(image_model_name=args.image_model, text_config=text_config(args.smoke).to_dict(),
                           image_size=args.image_size,
                           frozen_text_layers=min(6, text_config(args.smoke).num_hidden_layers))
    return ConvirtModel(config).to(device)


def bench_convirt_model_only(args, device, images, ids, mask) -> dict:
    from convirt_hf.losses import ConvirtLoss

    model = convirt_model(args, device)
    if not args.no_channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    loss_fn = ConvirtLoss(tau=0.1, loss_lambda=0.75)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device.type == "cuda" or None)
    forward = model
    if args.compile:
        try:
            forward = torch.compile(model)
        except Exception as error:  # an optimisation, never the reason a benchmark fails
            logger.warning("torch.compile failed (%s); measuring eager mode", error)
    use_bf16 = not args.fp32

    def step():
        with autocast(device, use_bf16):
            outputs = forward(pixel_values=images, input_ids=ids, attention_mask=mask)
            loss = loss_fn(outputs.image_embeds, outputs.text_embeds)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # FLOPs from the eager model (the counter does not see through compiled graphs)
    def eager_step():
        with autocast(device, use_bf16):
            outputs = model(pixel_values=images, input_ids=ids, attention_mask=mask)
            loss = loss_fn(outputs.image_embeds, outputs.text_embeds)
        loss.backward()
        optimizer.zero_grad(set_to_none=True)

    return _measure("convirt_model_only", step, args, device, flop_step=eager_step)


def _measure(name: str, step, args, device, flop_step=None) -> dict:
    flops = flops_per_sample(flop_step or step, args.batch_size)
    reset_peak_memory(device)
    seconds = time_steps(step, device, args.steps, args.warmup)
    result = {"name": name, "samples_per_s": args.batch_size / seconds, "flops_per_sample": flops,
              "peak_memory_gib": peak_memory_gib(device)}
    logger.info("%s: %.1f samples/s", name, result["samples_per_s"])
    return result


def pretraining_arguments(settings: dict, extra_flags: str):
    """The pretraining dataclasses for `settings` (field name -> value), with --pretrain_args' flags on top."""
    from convirt_hf.cli import parse_arguments
    from convirt_hf.pretraining import DataArguments, ModelArguments, PretrainingArguments

    *arguments, _ = parse_arguments((ModelArguments, DataArguments, PretrainingArguments), shlex.split(extra_flags),
                                    defaults=settings)
    return arguments


def logged_windows(output_dir: Path, warmup: int) -> list[float]:
    """The samples/s of the training log's windows after the warm-up steps."""
    rows = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    windows = [row["train/samples_per_second"] for row in rows
               if "train/samples_per_second" in row and row["step"] > warmup]
    if not windows:
        raise RuntimeError("the training loop logged no throughput after the warm-up; raise --steps")
    return windows


def bench_end_to_end(args, device, work_dir: Path) -> dict:
    """Runs the pretraining loop for --steps + --warmup steps and reads its logged throughput after the warm-up."""
    from convirt_hf.pretraining import pretrain

    output_dir = work_dir / "pretrain"
    total = args.warmup + args.steps
    settings = {
        "output_dir": str(output_dir), "image_model_name": args.image_model, "image_size": args.image_size,
        "per_device_batch_size": args.batch_size, "max_steps": total, "logging_steps": max(1, args.steps // 4),
        "eval_steps": total, "save_steps": total, "report_to": "none", "retrieval_set": "none",
        "augmentation": "paper", "num_workers": args.num_workers, "max_length": args.seq_len,
        "cache_dir": args.cache_dir, "mixed_precision": "no" if args.fp32 or device.type != "cuda" else "bf16",
        "dataset": args.dataset, "channels_last": not args.no_channels_last, "torch_compile": args.compile,
        "gpu_augmentation": args.gpu_augmentation,
        # a from-scratch BERT of the measured shape: the step's cost without downloading a tower
        "text_tower": "scratch",
        **({"text_layers": 2, "text_hidden_size": 32, "text_vocab_size": 500} if args.smoke else
           {"text_layers": 12, "text_hidden_size": 768, "text_vocab_size": 30522, "frozen_text_layers": "6",
            "freeze_text_embeddings": True}),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model_args, data_args, training_args = pretraining_arguments(settings, args.pretrain_args)
    pretrain(model_args, data_args, training_args)
    windows = logged_windows(output_dir, args.warmup)
    result = {"name": "convirt_end_to_end", "samples_per_s": sum(windows) / len(windows),
              "peak_memory_gib": peak_memory_gib(device),
              "pretraining": {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
                              "training": dataclasses.asdict(training_args)}}
    logger.info("convirt_end_to_end: %.1f samples/s", result["samples_per_s"])
    return result


def bench_inference(args, device, work_dir: Path) -> dict:
    """Image embeddings from preprocessed shards: decode, evaluation view, encoder (what retrieval runs)."""
    from datasets import load_from_disk
    from torch.utils.data import DataLoader

    from convirt_hf.data.transforms import ConvirtEvalTransform, default_eval_resize
    from convirt_hf.evaluation.features import _EvalViews

    if args.dataset is not None:
        folder = args.dataset
    else:
        from convirt_hf.evaluation.corpora import corpus_folder

        folder = corpus_folder(None, args.cache_dir)
    corpus = load_from_disk(str(folder))
    records = corpus[next(iter(corpus))] if hasattr(corpus, "keys") else corpus
    model = convirt_model(args, device).eval()
    encoder = model.image_encoder
    if not args.no_channels_last:
        encoder.to(memory_format=torch.channels_last)
    forward = torch.compile(encoder) if args.compile else encoder
    batch = args.inference_batch_size
    transform = ConvirtEvalTransform(resize=default_eval_resize(args.image_size), crop=args.image_size)
    loader = DataLoader(_EvalViews(records, transform), batch_size=batch, num_workers=args.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=args.num_workers > 0)
    needed = (args.warmup + args.steps) * batch
    images, started, seen = 0, None, 0
    with torch.no_grad():
        while images < needed:
            for pixel_values in loader:
                if seen == args.warmup:
                    synchronize(device)
                    started, images_timed = time.perf_counter(), 0
                pixel_values = pixel_values.to(device, non_blocking=True)
                if not args.no_channels_last:
                    pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
                with autocast(device, not args.fp32):
                    model.image_projection(forward(pixel_values))
                seen += 1
                images += len(pixel_values)
                if started is not None:
                    images_timed += len(pixel_values)
                if images >= needed:
                    break
    synchronize(device)
    rate = images_timed / (time.perf_counter() - started)
    logger.info("convirt_inference: %.1f images/s", rate)
    return {"name": "convirt_inference", "samples_per_s": rate, "peak_memory_gib": peak_memory_gib(device),
            "batch_size": batch}


def _timed(device: torch.device, phase: str, totals: dict, started: float) -> float:
    synchronize(device)
    now = time.perf_counter()
    totals[phase] = totals.get(phase, 0.0) + now - started
    return now


# a NamedTuple, not a dataclass: the test loads this file with importlib without registering it in sys.modules,
# where a dataclass's string annotations cannot be resolved
class _CpuDemoStep(NamedTuple):
    """The default run's training-step components, built as training/pretrain.py builds them."""

    model: Any
    loader: Any
    sampler: Any  # the loader's EpochShuffleSampler, told each new epoch as the training loop tells it
    optimizer: Any
    loss_fn: Any
    augment: Any  # DeviceAugmentation or None
    text_features: Any  # FrozenTextFeatures or None
    device: torch.device


def _build_cpu_demo_step(model_args, data_args, train_args, accelerator, work_dir: Path) -> _CpuDemoStep:
    from convirt_hf.frozen_text import FrozenTextFeatures
    from convirt_hf.losses import ConvirtLoss
    from convirt_hf.pretraining.api import build_optimizer
    from convirt_hf.pretraining.data import DeviceAugmentation, build_dataloaders, load_corpus
    from convirt_hf.pretraining.towers import build_model, check_towers, choose_text_pooling, prepare_tokenizer

    text_tower = check_towers(model_args, data_args)
    train_records, validation_records, _, _ = load_corpus(data_args, accelerator, train_args.seed)
    tokenizer = prepare_tokenizer(model_args, data_args, text_tower, train_records, accelerator, work_dir)
    processor, model = build_model(model_args, data_args, text_tower, tokenizer)
    if text_tower is not None:
        choose_text_pooling(model, tokenizer, model_args, data_args, train_records, accelerator)
    loader, sampler, _ = build_dataloaders(train_records, validation_records, processor, data_args, train_args)
    optimizer = build_optimizer(model, train_args)
    loss_fn = ConvirtLoss(tau=model_args.tau, loss_lambda=model_args.loss_lambda)
    augment = DeviceAugmentation(data_args, train_args, accelerator) if data_args.gpu_augmentation else None
    text_features = FrozenTextFeatures(model) if model.config.text_tower_frozen else None
    return _CpuDemoStep(model, loader, sampler, optimizer, loss_fn, augment, text_features, accelerator.device)


def _time_cpu_demo_phases(parts: _CpuDemoStep, warmup: int, steps: int) -> dict[str, float]:
    """Seconds per step of each phase, over `steps` steps after `warmup` ones."""
    parts.model.train()
    totals: dict[str, float] = {}
    steps_timed = 0
    batches = _batches_across_epochs(parts)
    for step in range(warmup + steps):
        if step == warmup:
            totals, steps_timed = {}, 0
        _timed_cpu_demo_step(parts, batches, step, totals)
        steps_timed += 1
    return {phase: seconds / steps_timed for phase, seconds in totals.items()}


def _batches_across_epochs(parts: _CpuDemoStep) -> Iterator[dict]:
    """The loader's batches epoch after epoch, so that --warmup plus --steps may pass the end of the first one."""
    epoch = 0
    while True:
        parts.sampler.use_epoch(epoch)
        yield from parts.loader
        epoch += 1


def _timed_cpu_demo_step(parts: _CpuDemoStep, batches: Iterator[dict], step: int, totals: dict[str, float]) -> None:
    """One training step on the next batch of `batches`, each phase's seconds added to `totals` (data: from asking
    the loader for the batch to the augmented batch on the device)."""
    import torch.nn.functional as F

    model, device = parts.model, parts.device
    started = time.perf_counter()
    batch = next(batches)
    batch.pop("id", None)
    batch = {key: value.to(device) for key, value in batch.items()}
    if parts.augment is not None:
        batch = parts.augment(batch, epoch=0, batch_index=step)
    started = _timed(device, "data", totals, started)
    if parts.text_features is not None:
        text_pooled = parts.text_features(batch["input_ids"], batch["attention_mask"])
    else:
        text_pooled = model.encode_text(batch["input_ids"], batch["attention_mask"])
    text_embeds = F.normalize(model.text_projection(text_pooled), dim=-1)
    started = _timed(device, "text side", totals, started)
    image_embeds = F.normalize(model.image_projection(model.image_encoder(batch["pixel_values"])), dim=-1)
    started = _timed(device, "image tower", totals, started)
    image_leaf = image_embeds.detach().requires_grad_()
    text_leaf = text_embeds.detach().requires_grad_()
    loss = parts.loss_fn(image_leaf, text_leaf)
    loss.backward()
    started = _timed(device, "loss", totals, started)
    image_embeds.backward(image_leaf.grad)
    started = _timed(device, "image tower", totals, started)
    text_embeds.backward(text_leaf.grad)
    started = _timed(device, "text side", totals, started)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    _timed(device, "optimizer", totals, started)


def _cpu_demo_loop_seconds(args, output_dir: Path, batch_size: int) -> float:
    """training/pretrain.py with the same defaults: its median seconds per step after the warm-up, from its log."""
    from convirt_hf.pretraining import pretrain

    total = args.warmup + args.steps
    pretrain(*pretraining_arguments({"output_dir": str(output_dir), "cache_dir": args.cache_dir, "max_steps": total,
                                     "logging_steps": max(1, min(5, args.steps)), "eval_steps": total,
                                     "save_steps": total,
                                     "report_to": "none", "retrieval_set": "none"}, args.pretrain_args))
    windows = sorted(batch_size / rate for rate in logged_windows(output_dir, args.warmup))
    return windows[len(windows) // 2]


def bench_cpu_demo(args, work_dir: Path) -> dict:
    """The default run's step, phase by phase: the same components as training/pretrain.py, timed one at a time."""
    from accelerate import Accelerator

    from convirt_hf.cpu_threads import configure_cpu_threads

    model_args, data_args, train_args = pretraining_arguments(
        {"output_dir": str(work_dir / "split"), "cache_dir": args.cache_dir}, args.pretrain_args)
    accelerator = Accelerator(cpu=True)
    threads, why = configure_cpu_threads(accelerator.device)
    parts = _build_cpu_demo_step(model_args, data_args, train_args, accelerator, work_dir / "split")
    split = _time_cpu_demo_phases(parts, args.warmup, args.steps)
    seconds_per_step = _cpu_demo_loop_seconds(args, work_dir / "loop", train_args.per_device_batch_size)
    logger.info("cpu demo: %.3f s/step in the training loop, %d threads", seconds_per_step, threads)
    config = parts.model.config
    return {"name": "cpu_demo", "seconds_per_step": seconds_per_step, "threads": threads, "threads_why": why,
            "split_seconds": split, "split_total": sum(split.values()),
            "samples_per_s": train_args.per_device_batch_size / seconds_per_step,
            "text_tower": config.text_tower_source, "image_model": config.image_model_name,
            "image_size": data_args.image_size, "batch_size": train_args.per_device_batch_size,
            "frozen_text_cache": parts.text_features is not None, "batched_augmentation": data_args.gpu_augmentation}


def format_cpu_demo(result: dict) -> str:
    split = result["split_seconds"]
    lines = [f"default run: {result['seconds_per_step']:.3f} s/step in the training loop, {result['threads']} CPU "
             f"thread(s) ({result['threads_why']})", "", "| phase | s/step | share |", "|---|---|---|"]
    for phase in ("data", "image tower", "text side", "loss", "optimizer"):
        seconds = split.get(phase, 0.0)
        lines.append(f"| {phase} | {seconds:.3f} | {100 * seconds / result['split_total']:.0f}% |")
    lines.append(f"| sum of phases | {result['split_total']:.3f} | 100% |")
    return "\n".join(lines)


def format_table(results: list[dict], peak: float | None) -> str:
    baseline = next((r["samples_per_s"] for r in results if r["name"] == "hf_dual_encoder"), None)
    lines = ["| measurement | samples/s | x (a) | MFU | peak memory (GiB) |", "|---|---|---|---|---|"]
    for row in results:
        ratio = f"{row['samples_per_s'] / baseline:.2f}" if baseline else "n/a"
        mfu = (f"{100 * row['samples_per_s'] * row['flops_per_sample'] / peak:.1f}%"
               if peak and row.get("flops_per_sample") else "n/a")
        memory = "n/a" if row.get("peak_memory_gib") is None else f"{row['peak_memory_gib']:.2f}"
        lines.append(f"| {row['name']} | {row['samples_per_s']:.1f} | {ratio} | {mfu} | {memory} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, under a minute")
    parser.add_argument("--cpu_demo", action="store_true",
                        help="the default run (make pretrain) on the CPU: the loop's s/step, threads and the split "
                        "of a step; --pretrain_args changes the run, --steps/--warmup the length")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--inference_batch_size", type=int, default=1024)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--seq_len", type=int, default=64, help="text length of (a), (b); the cap of (c)")
    parser.add_argument("--image_model", default="resnet50")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the ConVIRT model in (b)-(d)")
    parser.add_argument("--gpu_augmentation", action="store_true", help="augment on the device in (c)")
    parser.add_argument("--no_channels_last", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--num_workers", type=int, default=8)
    parser.add_argument("--dataset", default=None, help="preprocessed shards; default: the synthetic corpus")
    parser.add_argument("--cache_dir", default="~/.cache/convirt_hf")
    parser.add_argument("--pretrain_args", default="", help="extra training/pretrain.py arguments for (c)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c", "d"])
    parser.add_argument("--output", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        args.batch_size, args.inference_batch_size, args.image_size, args.seq_len = 8, 16, 32, 16
        args.image_model, args.steps, args.warmup, args.num_workers = "test_resnet", 2, 1, 0
    if args.smoke and args.cpu_demo:
        parser.error("--smoke and --cpu_demo are different modes: choose one")
    if args.cpu_demo:
        args.device = args.device or "cpu"
        if "--steps" not in (argv if argv is not None else sys.argv):
            args.steps = 30
    for name in ("batch_size", "inference_batch_size", "image_size", "seq_len", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from convirt_hf.cli import configure_logging

    configure_logging()
    if args.cpu_demo:
        return main_cpu_demo(args, argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    vocab = text_config(args.smoke).vocab_size
    ids, mask = fake_text(args.batch_size, args.seq_len, vocab, device)
    peak = measured_matmul_peak(device, 256 if args.smoke else 8192, torch.float32 if args.fp32 else torch.bfloat16)
    results = []
    with tempfile.TemporaryDirectory(prefix="convirt-benchmark-") as work:
        work_dir = Path(work)
        if args.smoke and args.dataset is None:  # a corpus of a few dozen pairs instead of the cached full one
            from convirt_hf.data.synthetic import SyntheticCorpusConfig, generate_synthetic_corpus

            tiny = SyntheticCorpusConfig(image_size=64, num_pretrain=48, num_validation=16, num_cls_train=0,
                                         num_cls_val=0, num_cls_test=0, retrieval_candidates_per_category=0,
                                         retrieval_queries_per_category=0)
            args.dataset = str(generate_synthetic_corpus(work_dir / "corpus", tiny))
        if "a" not in args.skip:
            results.append(bench_hf_dual_encoder(args, device, images, ids, mask))
        if "b" not in args.skip:
            results.append(bench_convirt_model_only(args, device, images, ids, mask))
        if "c" not in args.skip:
            results.append(bench_end_to_end(args, device, work_dir))
        if "d" not in args.skip:
            results.append(bench_inference(args, device, work_dir))
    model_only = next((r for r in results if r["name"] == "convirt_model_only"), None)
    for row in results:  # the end-to-end loop trains the same model: its FLOPs per sample are (b)'s
        if row["name"] == "convirt_end_to_end" and model_only is not None:
            row["flops_per_sample"] = model_only["flops_per_sample"]
    table = format_table(results, peak)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__, "matmul_peak_flops": peak, "arguments": vars(args), "results": results,
        "table": table, "command": "python benchmarks/train_throughput.py " + shlex.join(sys.argv[1:] if argv is None
                                                                                       else argv),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(f"device: {report['device']}\n\n{table}")
    return report


def main_cpu_demo(args, argv) -> dict:
    with tempfile.TemporaryDirectory(prefix="convirt-benchmark-") as work:
        result = bench_cpu_demo(args, Path(work))
    table = format_cpu_demo(result)
    report = {
        "device": f"cpu ({platform.processor() or platform.machine()}, {result['threads']} threads)",
        "torch": torch.__version__, "arguments": vars(args), "results": [result], "table": table,
        "command": "python benchmarks/train_throughput.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    print(table)
    return report


if __name__ == "__main__":
    main()
