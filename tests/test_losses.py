"""The ConVIRT loss against a hand-written reference of the paper's formula, CLIP, and its 2-process version."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from transformers.models.clip import modeling_clip

from convirt_hf.losses import ConvirtLoss


def reference_loss(v: torch.Tensor, u: torch.Tensor, tau: float, lam: float) -> float:
    """The paper's formula written out term by term with Python floats."""
    n = v.shape[0]
    v = F.normalize(v, dim=-1).tolist()
    u = F.normalize(u, dim=-1).tolist()

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))

    total = 0.0
    for i in range(n):
        image_to_text = -math.log(math.exp(cos(v[i], u[i]) / tau)
                                  / sum(math.exp(cos(v[i], u[k]) / tau) for k in range(n)))
        text_to_image = -math.log(math.exp(cos(u[i], v[i]) / tau)
                                  / sum(math.exp(cos(u[i], v[k]) / tau) for k in range(n)))
        total += lam * image_to_text + (1 - lam) * text_to_image
    return total / n


@pytest.mark.parametrize(("tau", "lam"), [(0.1, 0.75), (0.1, 0.5), (0.07, 0.0), (1.0, 1.0), (0.5, 0.25)])
def test_loss_matches_the_papers_formula(tau, lam):
    generator = torch.Generator().manual_seed(1)
    v = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    u = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    loss = ConvirtLoss(tau=tau, loss_lambda=lam)(F.normalize(v, dim=-1), F.normalize(u, dim=-1))
    assert loss.item() == pytest.approx(reference_loss(v, u, tau, lam), rel=1e-6)


def test_lambda_weights_the_two_directions_differently():
    generator = torch.Generator().manual_seed(2)
    v = F.normalize(torch.randn(8, 4, generator=generator), dim=-1)
    u = F.normalize(torch.randn(8, 4, generator=generator), dim=-1)
    assert ConvirtLoss(loss_lambda=1.0)(v, u).item() != pytest.approx(ConvirtLoss(loss_lambda=0.0)(v, u).item())


def test_lambda_half_is_the_symmetric_clip_loss():
    generator = torch.Generator().manual_seed(3)
    v = F.normalize(torch.randn(7, 16, generator=generator), dim=-1)
    u = F.normalize(torch.randn(7, 16, generator=generator), dim=-1)
    tau = 0.1
    logits_per_text = u @ v.t() / tau  # transformers' CLIP takes the text-by-image similarity
    # transformers renamed clip_loss to image_text_contrastive_loss in 5.x
    clip_loss = getattr(modeling_clip, "image_text_contrastive_loss", None) or modeling_clip.clip_loss
    expected = clip_loss(logits_per_text)
    assert ConvirtLoss(tau=tau, loss_lambda=0.5)(v, u).item() == pytest.approx(expected.item(), rel=1e-6)


def test_model_forward_loss_equals_the_loss_module(model):
    model.eval()
    pixel_values = torch.randn(3, 3, 32, 32)
    input_ids = torch.randint(5, model.config.text_config.vocab_size, (3, 9))
    outputs = model(pixel_values=pixel_values, input_ids=input_ids, return_loss=True)
    expected = ConvirtLoss(model.config.tau, model.config.loss_lambda)(outputs.image_embeds, outputs.text_embeds)
    assert outputs.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        ConvirtLoss(tau=0)
    with pytest.raises(ValueError, match="loss_lambda"):
        ConvirtLoss(loss_lambda=2)
    with pytest.raises(ValueError, match="one text per image"):
        ConvirtLoss()(torch.randn(3, 4), torch.randn(2, 4))


# Two gloo processes: each holds half the batch, the model is DDP-wrapped as in training.

WORLD_SIZE = 2
BATCH, FEATURES, DIM = 8, 6, 4


def _toy_problem():
    generator = torch.Generator().manual_seed(0)
    image_features = torch.randn(BATCH, FEATURES, generator=generator)
    text_features = torch.randn(BATCH, FEATURES, generator=generator)
    torch.manual_seed(0)
    heads = torch.nn.ModuleDict({"image": torch.nn.Linear(FEATURES, DIM), "text": torch.nn.Linear(FEATURES, DIM)})
    return image_features, text_features, heads


def _embed(heads, image_features, text_features):
    return F.normalize(heads["image"](image_features), dim=-1), F.normalize(heads["text"](text_features), dim=-1)


class _Heads(torch.nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, image_features, text_features):
        return _embed(self.heads, image_features, text_features)


def _worker(rank: int, port: int, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        image_features, text_features, heads = _toy_problem()
        model = torch.nn.parallel.DistributedDataParallel(_Heads(heads))
        rows = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
        image_embeds, text_embeds = model(image_features[rows], text_features[rows])
        loss = ConvirtLoss(tau=0.1, loss_lambda=0.75)(image_embeds, text_embeds)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[rank] = {
            "local_loss": loss.item(),
            "mean_loss": mean_loss.item() / WORLD_SIZE,
            "grads": {name: p.grad.clone() for name, p in model.module.named_parameters()},
        }
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one_process_on_the_whole_batch():
    image_features, text_features, heads = _toy_problem()
    image_embeds, text_embeds = _embed(heads, image_features, text_features)
    full_loss = ConvirtLoss(tau=0.1, loss_lambda=0.75)(image_embeds, text_embeds)
    full_loss.backward()
    expected_grads = {f"heads.{name}": p.grad for name, p in heads.named_parameters()}

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD_SIZE, join=True)

    for rank in range(WORLD_SIZE):
        assert results[rank]["mean_loss"] == pytest.approx(full_loss.item(), rel=1e-5)
        for name, grad in expected_grads.items():
            torch.testing.assert_close(results[rank]["grads"][name], grad, rtol=1e-5, atol=1e-6)
    # Each process's own value is its rows' mean, which differs from the full-batch mean: the average is what matches.
    assert results[0]["local_loss"] != pytest.approx(results[1]["local_loss"])
