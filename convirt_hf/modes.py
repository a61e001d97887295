"""Running a module in eval mode for a while: evaluation inside training must not leave dropout off, nor BatchNorm
statistics frozen, for the steps that follow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["evaluating"]


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """
    Puts `module` in eval mode for the block and gives it back its previous mode afterwards, also when the block
    raises.

    Example:

    ```python
    >>> with evaluating(model), torch.no_grad():
    ...     embeddings = model.get_image_features(pixel_values)
    ```
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
