"""The findings drawn into a film: each a painter that takes the film's density and returns it with the finding.

Painters run in the order of the findings, after the chest and before the bones; cardiomegaly has none, since the
heart is drawn at its size from the geometry. :data:`LESION_PAINTERS` is the table the film looks painters up in.
"""

from __future__ import annotations

import math

import numpy as np

from .anatomy import _lateral_wall, _rib_points, _Scene, _sign
from .drawing import _blend, _gaussian, _Layer, _smooth_noise, _smoothstep, _soft, _window
from .vocabulary import SIDES, Finding


def _draw_effusion(density, finding: Finding, scene: _Scene, lungs: dict):
    geometry, yy, xx, rng, edge = scene.geometry, scene.yy, scene.xx, scene.rng, scene.edge
    for side in finding.sides:
        depth = {"small": 0.23, "moderate": 0.36, "large": 0.52}[finding.severity] + rng.uniform(-0.03, 0.03)
        level = geometry.sulcus[side] - depth * (geometry.sulcus[side] - geometry.apex)
        s = _sign(side) * (xx - geometry.cx)
        u = np.clip(s / geometry.width, 0, 1)
        meniscus = level - rng.uniform(0.08, 0.12) * u**2  # fluid climbs the lateral chest wall
        fluid = _soft(yy - meniscus, 0.012 + edge) * lungs[side]
        # homogeneous, a little denser towards the base
        alpha = fluid * (0.8 + 0.15 * _smoothstep((yy - meniscus) / 0.1))
        density = _blend(density, 0.7, alpha)
    return density


def _draw_pneumonia(density, finding: Finding, scene: _Scene, lungs: dict):
    geometry, yy, xx, rng, size = scene.geometry, scene.yy, scene.xx, scene.rng, scene.size
    side = finding.side
    sign = _sign(side)
    zone = {"upper": 0.22, "middle": 0.47, "lower": 0.72}[finding.zone]
    cy = geometry.apex + zone * (geometry.dome[side] - geometry.apex) + rng.uniform(-0.02, 0.02)
    cx = geometry.cx + sign * geometry.width * rng.uniform(0.45, 0.62)
    spread = rng.uniform(0.07, 0.1)
    # drawn in a window around the consolidation only (0.6 of the image wide), for speed
    rows, columns = _window(cy, 0.3, size), _window(cx, 0.3, size)
    shape = (rows.stop - rows.start, columns.stop - columns.start)
    # blobs on warped coordinates: an irregular, lobulated outline rather than a round ball
    warp_y = yy[rows] + 0.05 * _smooth_noise(rng, shape, 4)
    warp_x = xx[:, columns] + 0.05 * _smooth_noise(rng, shape, 4)
    field_ = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(6, 10))):
        oy, ox = rng.normal(0, spread * 0.6, 2)
        sy, sx = rng.uniform(0.03, 0.055, 2)
        field_ += np.exp(-(((warp_y - cy - oy) / sy) ** 2 + ((warp_x - cx - ox) / sx) ** 2) / 2)
    # patchy: coarse and fine mottling make the edges ill-defined and the inside uneven
    mottle = 0.6 * _smooth_noise(rng, shape, 7) + 0.4 * _smooth_noise(rng, shape, 18)
    consolidation = np.zeros_like(density)
    consolidation[rows, columns] = _smoothstep((field_ + 0.45 * mottle - 0.25) / 0.75) * lungs[side][rows, columns]
    opacity = np.zeros_like(density)
    opacity[rows, columns] = np.clip(0.9 * consolidation[rows, columns] * (0.8 + 0.35 * mottle), 0, 0.95)
    density = _blend(density, 0.66, opacity)
    # air bronchograms: dark branching tubes inside the consolidation
    layer = _Layer(size)
    hilum = (geometry.mediastinum_x + sign * 0.08, geometry.hilum_y)
    for _ in range(3):
        angle = math.atan2(cy - hilum[1], sign * (cx - hilum[0])) + rng.uniform(-0.5, 0.5)
        start = (cx - sign * 0.06 * math.cos(angle), cy - 0.06 * math.sin(angle))
        end = (cx + sign * 0.08 * math.cos(angle), cy + 0.08 * math.sin(angle))
        layer.line([start, end], 0.007, 1.0)
    return density - 0.14 * layer.array(blur=0.002) * consolidation


def _draw_hematoma(density, finding: Finding, scene: _Scene, lungs: dict):
    """An extrapleural hematoma: a lens of blood along the inner chest wall at the level of the broken ribs."""
    geometry, anatomy, yy, xx, rng, edge = (scene.geometry, scene.anatomy, scene.yy, scene.xx, scene.rng,
                                            scene.edge)
    side = finding.side
    levels = [_rib_points(geometry, anatomy, side, rib, (finding.position,))[0][1]
              for rib in finding.ribs]
    top, bottom = min(levels) - 0.06, max(levels) + 0.065
    center, half = (top + bottom) / 2, (bottom - top) / 2
    thickness = rng.uniform(0.038, 0.048) * np.sqrt(np.clip(1 - ((yy - center) / half) ** 2, 0, 1))
    depth = _lateral_wall(geometry, side, yy) - _sign(side) * (xx - geometry.cx)  # inwards from the wall
    # the lens bulges into the lung with obtuse, tapering margins (a pleural-based mass, not a round nodule)
    lens = _soft(thickness - depth, edge + 0.004) * lungs[side]
    return _blend(density, 0.62, 0.85 * lens)


def _draw_atelectasis(density, finding: Finding, scene: _Scene, lungs: dict):
    geometry, yy, xx, rng, edge = scene.geometry, scene.yy, scene.xx, scene.rng, scene.edge
    strength = {"mild": 0.8, "moderate": 1.0}[finding.severity] * (0.85 if finding.side == "bilateral" else 1.0)
    for side in finding.sides:
        sign = _sign(side)
        s = sign * (xx - geometry.cx)
        width = geometry.width
        # collapsed lower lobe: a homogeneous density under a sharp, displaced fissure that runs from the hilum down to
        # the lateral lung base; the costophrenic angle stays aerated (an effusion's meniscus rises laterally instead)
        medial, lateral = 0.15 * width, width * rng.uniform(0.62, 0.78)
        top, bottom = geometry.hilum_y + rng.uniform(0.03, 0.07), geometry.dome[side] - 0.005
        along = np.clip((s - medial) / (lateral - medial), 0.0, None)
        fissure = top + (bottom - top) * along
        wedge = _soft(yy - fissure, edge + 0.002) * lungs[side]
        density = _blend(density, 0.64, 0.85 * strength * (1.0 - 0.2 * np.clip(along, 0, 1)) * wedge)
        # and, always (every atelectasis report may call it plate-like or linear), a plate-like band of subsegmental
        # atelectasis above it
        center_s, center_y = width * rng.uniform(0.5, 0.65), (top + bottom) / 2 - rng.uniform(0.04, 0.07)
        offset = yy - (center_y + rng.uniform(-0.15, 0.15) * (s - center_s))
        reach = _soft(width * 0.22 - np.abs(s - center_s), 0.06)
        band = np.exp(-((offset / rng.uniform(0.008, 0.012)) ** 2)) * reach
        density = _blend(density, 0.64, 0.8 * band * lungs[side])
    return density


def _draw_edema(density, finding: Finding, scene: _Scene, lungs: dict):
    geometry, anatomy, yy, xx, rng, size = (scene.geometry, scene.anatomy, scene.yy, scene.xx, scene.rng,
                                            scene.size)
    amount = {"mild": 0.6, "moderate": 0.72, "severe": 0.85}[finding.severity] + rng.uniform(-0.05, 0.05)
    haze = np.zeros_like(density)
    kerley = _Layer(size)
    for side in SIDES:
        sign = _sign(side)
        hx = geometry.mediastinum_x + sign * (anatomy.mediastinum_half_width + 0.07)
        sx, sy = rng.uniform(0.12, 0.15), rng.uniform(0.13, 0.17)
        haze = np.maximum(haze, _gaussian(yy, xx, geometry.hilum_y + 0.03, hx, sy, sx))
        for _ in range(int(rng.integers(4, 8))):  # Kerley B lines: short horizontal lines at the lateral bases
            y = rng.uniform(geometry.dome[side] - 0.2, geometry.sulcus[side] - 0.04)
            wall = geometry.cx + sign * float(_lateral_wall(geometry, side, np.float32(y)))
            length = rng.uniform(0.03, 0.05)
            kerley.line([(wall - sign * 0.004, y), (wall - sign * (0.004 + length), y)], 0.004, 1.0)
    mottle = _smooth_noise(rng, size, 24)
    lung = np.clip(lungs["right"] + lungs["left"], 0, 1)
    density = _blend(density, 0.66, amount * np.clip(haze * (0.85 + 0.3 * mottle), 0, 1) * lung)
    return density + 0.2 * kerley.array(blur=0.0015) * lung


# The painter of each finding drawn as a lesion (cardiomegaly is drawn by the heart's geometry).
LESION_PAINTERS = {
    "pleural effusion": _draw_effusion,
    "pneumonia": _draw_pneumonia,
    "atelectasis": _draw_atelectasis,
    "fracture": _draw_hematoma,
    "edema": _draw_edema,
}
