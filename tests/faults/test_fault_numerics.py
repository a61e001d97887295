"""Numerics: bf16 autocast computes the same loss as fp32, and non-finite inputs stop training with a saved state.

tests/test_pretrain.py covers NaN pixels and an infinite loss; here the other non-finite input (+inf pixels), and
the mixed-precision path against full precision, on a single batch and through the real training loop.
"""

from __future__ import annotations

import json

import pytest
import torch

from convirt_hf.checkpointing import latest_checkpoint

from faultkit import tiny_args
from training import pretrain

# bf16 keeps 8 significant bits (relative rounding 2**-9 ~ 0.2%) on every matmul and convolution input; through a
# ResNet, a BERT, the heads and logits scaled by 1/tau = 10, the loss of a 16-pair batch moved by 0.02-0.23% and the
# gradient's cosine to the fp32 one was 0.95-0.99 (this machine's CPU, seeds 0-4). 2% and 0.9 leave room for other
# kernels while failing on real mistakes (a loss computed in bf16 end to end, a wrong cast or a dropped normalisation
# move the loss by tens of percent).
LOSS_TOLERANCE = 0.02
GRADIENT_COSINE = 0.9


def batch(tokenizer, size: int = 16, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    words = ["heart", "enlarged", "no", "effusion", "lungs", "clear", "opacity", "left", "base", "stable"]
    sentences = [" ".join(words[i] for i in torch.randint(0, len(words), (6,), generator=generator).tolist())
                 for _ in range(size)]
    text = tokenizer(sentences, padding=True, return_tensors="pt")
    pixels = torch.randn(size, 3, 32, 32, generator=generator)
    return {"pixel_values": pixels, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_and_fp32_losses_and_gradients_agree_on_the_same_batch(seed, model, tokenizer):
    model.train()
    inputs = batch(tokenizer, seed=seed)

    def loss_and_gradient(bf16: bool):
        model.zero_grad()
        torch.manual_seed(seed)  # the same dropout masks in both passes
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs, return_loss=True).loss
        loss.backward()
        gradient = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        return loss.detach(), gradient

    fp32_loss, fp32_gradient = loss_and_gradient(False)
    bf16_loss, bf16_gradient = loss_and_gradient(True)
    assert fp32_loss.dtype == bf16_loss.dtype == torch.float32  # the loss itself is always computed in fp32
    assert torch.isfinite(bf16_loss)
    assert abs(bf16_loss - fp32_loss) / fp32_loss < LOSS_TOLERANCE, (fp32_loss.item(), bf16_loss.item())
    cosine = torch.nn.functional.cosine_similarity(fp32_gradient, bf16_gradient, dim=0)
    assert cosine > GRADIENT_COSINE, cosine.item()


def test_bf16_training_follows_the_fp32_run(tiny_corpus, zygote, tmp_path):
    runs = {}
    for precision in ("no", "bf16"):  # separate processes: accelerate fixes the precision once per process
        output_dir = tmp_path / precision
        zygote.run(tiny_args(tiny_corpus, output_dir, retrieval_set="none", max_steps=4, save_steps=4, eval_steps=4,
                             mixed_precision=precision), name=f"precision-{precision}")
        rows = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
        runs[precision] = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(runs["no"]) == len(runs["bf16"]) == 4
    first_fp32, first_bf16 = runs["no"][0], runs["bf16"][0]  # the same weights, batch and augmentations
    assert abs(first_bf16 - first_fp32) / first_fp32 < LOSS_TOLERANCE, runs
    assert all(abs(b - f) / f < 0.1 for f, b in zip(runs["no"], runs["bf16"])), runs  # then drifting, not diverging


@pytest.mark.parametrize("augmentation", ["device", "loader"])
def test_infinite_pixels_stop_the_run_with_a_saved_state(augmentation, tiny_corpus, tmp_path, monkeypatch):
    """One +inf pixel in the third batch, made by the training device's batched augmentation (the default) or by
    the CPU transform in the loader (--gpu_augmentation false)."""
    from convirt_hf.data.pairs import PairViews
    from convirt_hf.pretraining.data import DeviceAugmentation

    if augmentation == "device":
        original_augment = DeviceAugmentation.__call__

        def overexposed_batch(self, batch, epoch, batch_index):
            batch = original_augment(self, batch, epoch, batch_index)
            if batch_index == 2:
                batch["pixel_values"][0, 0, 0, 0] = float("inf")  # one pixel is enough
            return batch

        monkeypatch.setattr(DeviceAugmentation, "__call__", overexposed_batch)
    else:
        original_item = PairViews.__getitem__

        def overexposed_view(self, tagged_index):
            example = original_item(self, tagged_index)
            if self.image_transform.__class__.__name__ == "ConvirtTrainTransform" and tagged_index % self.num_rows == 3:
                example["pixel_values"][0, 0, 0] = float("inf")
            return example

        monkeypatch.setattr(PairViews, "__getitem__", overexposed_view)
    output_dir = tmp_path / "inf"
    with pytest.raises(pretrain.NonFiniteTrainingError, match=r"Non-finite pixel values in the batch of step \d+"):
        pretrain.main(tiny_args(tiny_corpus, output_dir, retrieval_set="none", max_steps=20, save_steps=50,
                                gpu_augmentation="true" if augmentation == "device" else "false"))
    assert latest_checkpoint(output_dir / "checkpoints") is not None  # the state before the bad batch is kept
