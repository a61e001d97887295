"""Drawing primitives for the synthetic films: soft masks, smooth noise and a surface to draw lines and shapes on.

Coordinates are in units of the image (x to the right, y down), so the same drawing code serves every image size.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _soft(distance, edge: float):
    """A mask from a signed distance (positive inside) with an anti-aliased edge of `edge` width."""
    mask = distance * np.float32(1.0 / edge)
    mask += np.float32(0.5)
    return np.clip(mask, 0.0, 1.0, out=mask)


def _gaussian(yy, xx, cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    """A 2-D Gaussian bump from a column `yy` and a row `xx`, computed separably (two 1-D exps, one product)."""
    return np.exp(-0.5 * ((yy - cy) / sy) ** 2) * np.exp(-0.5 * ((xx - cx) / sx) ** 2)


def _smoothstep(value):
    value = np.clip(value, 0.0, 1.0)
    return value * value * (3 - 2 * value)


def _smooth_noise(rng: np.random.Generator, size: int | tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a `cells` x `cells` random grid upsampled bicubically to `size`."""
    height, width = (size, size) if isinstance(size, int) else size
    # PIL rather than a matrix product: BLAS threads would compete with the generation worker processes
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BICUBIC)) / 2.5


def _window(center: float, half: float, size: int) -> slice:
    """The pixel indices within `half` of `center` (unit coordinates), clipped to the image."""
    return slice(max(0, int((center - half) * size)), min(size, int(math.ceil((center + half) * size))))


class _Layer:
    """An 8-bit drawing surface in unit coordinates; `array()` gives it blurred, as float in [0, 1]."""

    def __init__(self, size: int):
        self.size = size
        self.image = Image.new("L", (size, size), 0)
        self.draw = ImageDraw.Draw(self.image)

    def _xy(self, points):
        return [(float(x) * self.size, float(y) * self.size) for x, y in points]

    def line(self, points, width: float, value: float = 1.0) -> None:
        pixels = width * self.size
        # thin lines keep their total density by being dimmer rather than vanishing at small image sizes
        shade = value * min(1.0, pixels)
        self.draw.line(self._xy(points), fill=int(round(255 * shade)), width=max(1, int(round(pixels))))

    def ellipse(self, center, radii, value: float = 1.0) -> None:
        (cx, cy), (rx, ry) = center, radii
        self.draw.ellipse(self._xy([(cx - rx, cy - ry), (cx + rx, cy + ry)]), fill=int(round(255 * value)))

    def polygon(self, points, value: float = 1.0) -> None:
        self.draw.polygon(self._xy(points), fill=int(round(255 * value)))

    def array(self, blur: float = 0.0) -> np.ndarray:
        image = self.image
        if blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(blur * self.size))
        return np.asarray(image, dtype=np.float32) / 255.0


def _blend(density, target: float, alpha):
    """`density` moved towards `target` by `alpha` (0: unchanged, 1: `target`)."""
    return density + (target - density) * alpha
