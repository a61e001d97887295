"""The ConVIRT loss for one or many processes.

The formula (Zhang et al., arXiv 2010.00747): for N pairs with L2-normalised image embeddings v and text embeddings u,

    l(v->u)_i = -log( exp(<v_i,u_i>/tau) / sum_k exp(<v_i,u_k>/tau) )
    l(u->v)_i = -log( exp(<u_i,v_i>/tau) / sum_k exp(<u_i,v_k>/tau) )
    L = (1/N) sum_i ( lambda * l(v->u)_i + (1 - lambda) * l(u->v)_i )

With several processes each holds n = N / world_size pairs. Each process scores its own n rows against the
gathered N columns of all processes, with a gather that carries gradients back to the process that produced each
column (``accelerator.gather`` and ``torch.distributed.all_gather`` do not). The value returned on each process is the
mean over its own rows; averaging it over processes (DDP averages gradients the same way) gives exactly the
single-process loss and gradients of the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .modeling.modeling_convirt import contrastive_logits, convirt_loss

__all__ = ["ConvirtLoss", "contrastive_logits", "convirt_loss", "gather_with_grad"]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """All-gathers `tensor` along dim 0 from every process; gradients flow back to each process's own slice."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def check_equal_local_batches(local_batch_size: int, world_size: int, device: torch.device) -> None:
    """Fails clearly when processes hold different batch sizes (a gather would fail or misalign the labels)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([local_batch_size], dtype=torch.long, device=device))
    counts = [int(size.item()) for size in sizes]
    if len(set(counts)) != 1:
        raise RuntimeError(
            f"ConVIRT's gathered loss needs the same batch size on every process, got {counts}. Use drop_last=True "
            "on the training DataLoader."
        )


class ConvirtLoss(nn.Module):
    r"""
    The ConVIRT bidirectional contrastive loss, with negatives gathered from all processes.

    Args:
        tau (`float`, defaults to 0.1): temperature.
        loss_lambda (`float`, defaults to 0.75): weight of the image-to-text direction.
        rank (`int`, *optional*): this process's rank; read from `torch.distributed` when initialised.
        world_size (`int`, *optional*): number of processes; read from `torch.distributed` when initialised.
        check_batch_sizes (`bool`, defaults to `True`): verify every process holds the same batch size (one tiny
            collective per step) so that a ragged last batch fails with a message instead of a hang or wrong labels.

    Inputs are the L2-normalised `image_embeds` and `text_embeds` of this process's pairs (pair i = row i), as returned
    by [`ConvirtModel`]. The result is this process's mean over its rows; see the module docstring.
    """

    def __init__(
        self,
        tau: float = 0.1,
        loss_lambda: float = 0.75,
        rank: int | None = None,
        world_size: int | None = None,
        check_batch_sizes: bool = True,
    ):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if not 0.0 <= loss_lambda <= 1.0:
            raise ValueError(f"loss_lambda must be in [0, 1], got {loss_lambda!r}")
        distributed = dist.is_available() and dist.is_initialized()
        self.tau = tau
        self.loss_lambda = loss_lambda
        self.rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
        self.check_batch_sizes = check_batch_sizes

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"ConvirtLoss needs one text per image: got {image_embeds.shape[0]} images and "
                f"{text_embeds.shape[0]} texts"
            )
        local_batch_size = image_embeds.shape[0]
        if self.world_size == 1:
            logits_per_image = contrastive_logits(image_embeds, text_embeds, self.tau)
            return convirt_loss(logits_per_image, logits_per_image.t(), self.loss_lambda)

        if self.check_batch_sizes:
            check_equal_local_batches(local_batch_size, self.world_size, image_embeds.device)
        all_image_embeds = gather_with_grad(image_embeds)
        all_text_embeds = gather_with_grad(text_embeds)
        logits_per_image = contrastive_logits(image_embeds, all_text_embeds, self.tau)
        logits_per_text = contrastive_logits(text_embeds, all_image_embeds, self.tau)
        labels = torch.arange(local_batch_size, device=image_embeds.device) + self.rank * local_batch_size
        return convirt_loss(logits_per_image, logits_per_text, self.loss_lambda, labels)
