"""The film: a frontal chest radiograph drawn from an anatomy and its findings, step by step, densest last.

The steps run in a fixed order, and with them the draws from the generator, so that a (seed, split, row) always gives
the same image: body and abdomen, the chest (lungs, mediastinum, heart), spine and airway, lung markings, the
findings (:mod:`.lesions`), bones, support devices, then the acquisition (exposure, noise, positioning).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .anatomy import (
    RIB_VERTICES,
    Anatomy,
    _diaphragm,
    _Geometry,
    _heart_mask,
    _hemithorax,
    _mediastinum_mask,
    _rib_points,
    _Scene,
    _sign,
)
from .drawing import _blend, _gaussian, _Layer, _smooth_noise, _smoothstep, _soft
from .lesions import LESION_PAINTERS
from .vocabulary import CATEGORIES, DEVICES, SIDES, Finding, make_finding, sample_findings

BONE_DENSITY = 0.3
# how far a pneumothorax retracts the lung from the chest wall, by severity (unit image widths)
PNEUMOTHORAX_COLLAPSE = {"small": 0.05, "moderate": 0.08, "large": 0.115}


def _draw_bones(geometry: _Geometry, anatomy: Anatomy, findings: Sequence[Finding], size: int) -> np.ndarray:
    """Ribs (broken ones with a gap and a step-off), clavicles and scapulae on one layer; values are densities /
    `BONE_DENSITY`."""
    layer = _Layer(size)
    fractures = {(f.side, rib): f for f in findings if f.name == "fracture" for rib in f.ribs}
    width = anatomy.rib_width
    # a medulla narrower than about a pixel would overwrite the whole cortex line (PIL lines replace, not add) and
    # leave the ribs at medulla density: thin ribs are drawn as one line of their mean density instead
    hollow = width * 0.45 * size >= 1.5
    for side in SIDES:
        sign = _sign(side)
        # scapula: rotated out of the lungs on PA films, overlapping their upper lateral part on AP films
        inset = 0.2 if anatomy.view == "AP" else 0.02
        wall = geometry.width + 0.04
        layer.polygon([(geometry.cx + sign * wall, geometry.apex + 0.04),
                       (geometry.cx + sign * geometry.width * (1 - inset), geometry.apex + 0.1),
                       (geometry.cx + sign * geometry.width * (1 - inset * 0.6), geometry.apex + 0.32),
                       (geometry.cx + sign * wall, geometry.apex + 0.36)], 0.07)
        for number in range(1, 7):  # anterior ribs: fainter, running down towards the sternum
            y_wall = geometry.apex + 0.02 + (number - 1) * anatomy.rib_spacing * 1.2
            points = [(geometry.cx + sign * geometry.width * (1.03 - 0.75 * v), y_wall + 0.11 * v + 0.04 * v**2)
                      for v in np.linspace(0, 1, 8)]
            layer.line(points, width * 1.25, 0.14)
        for number in range(1, 11):  # posterior ribs
            fracture = fractures.get((side, number))
            if fracture is None:
                segments = [(_rib_points(geometry, anatomy, side, number), (0.0, 0.0))]
            else:
                (x0, y0), (x1, y1) = _rib_points(geometry, anatomy, side, number,
                                                 (fracture.position - 0.02, fracture.position + 0.02))
                angle = math.atan2(y1 - y0, x1 - x0)
                # a cortical break: the lateral fragment is displaced across the rib's axis by more than the rib's
                # width (a step-off) and pulled away from the medial one (a lucent gap), so the break still shows as
                # an interrupted, offset rib when the film is shrunk to 64 pixels
                step = (-math.sin(angle) * fracture.step, math.cos(angle) * fracture.step)
                gap = 0.08  # of the rib's length: about 2 pixels at 64
                # both fragments keep the unbroken rib's vertices, so the film only changes at the break
                medial_end, lateral_start = fracture.position - gap / 2, fracture.position + gap / 2
                medial = _rib_points(geometry, anatomy, side, number,
                                     [v for v in RIB_VERTICES if v < medial_end] + [medial_end])
                lateral = _rib_points(geometry, anatomy, side, number,
                                      [lateral_start] + [v for v in RIB_VERTICES if v > lateral_start])
                segments = [(medial, (0.0, 0.0)), (lateral, step)]
            for points, (dx, dy) in segments:
                points = [(x + dx, y + dy) for x, y in points]
                if hollow:
                    layer.line(points, width, 0.65)
                    layer.line(points, width * 0.45, 0.4)  # the medulla is less dense than the cortex
                else:
                    layer.line(points, width, 0.53)
        # clavicle: higher and more horizontal on AP films
        clavicle_y = geometry.apex + (0.0 if anatomy.view == "AP" else 0.035)
        rise = 0.015 if anatomy.view == "AP" else 0.05
        points = [(geometry.cx + sign * (0.03 + v * (geometry.width + 0.05)),
                   clavicle_y + 0.012 - rise * v + 0.012 * math.sin(math.pi * v)) for v in np.linspace(0, 1, 10)]
        layer.line(points, 0.024, 0.45)
    return layer.array(blur=0.003)


def _draw_vessels(geometry: _Geometry, anatomy: Anatomy, rng: np.random.Generator, size: int, blur: float):
    """Lung markings: vessel trees branching out from each hilum, thinning towards the periphery."""
    layer = _Layer(size)
    for side in SIDES:
        sign = _sign(side)
        hilum = (geometry.mediastinum_x + sign * (anatomy.mediastinum_half_width + 0.02), geometry.hilum_y)
        for angle in np.radians(np.linspace(-70, 75, 8) + rng.uniform(-8, 8, 8)):  # below the horizontal
            # each vessel forks twice; the two limbs of a fork are drawn as one polyline (fewer, faster draw calls)
            length, width = rng.uniform(0.1, 0.14), 0.009
            end = (hilum[0] + sign * length * math.cos(angle), hilum[1] + length * math.sin(angle))
            layer.line([hilum, end], width, 1.0)
            forks = [(end, angle, length)]
            for depth in (1, 2):
                width *= 0.62
                next_forks = []
                for (x, y), direction, reach in forks:
                    limbs = []
                    for turn in (-1, 1):
                        bend = direction + turn * math.radians(rng.uniform(14, 34))
                        reach_ = reach * rng.uniform(0.65, 0.85)
                        tip = (x + sign * reach_ * math.cos(bend) + rng.normal(0, 0.004),
                               y + reach_ * math.sin(bend) + rng.normal(0, 0.004))
                        limbs.append(tip)
                        next_forks.append((tip, bend, reach_))
                    layer.line([limbs[0], (x, y), limbs[1]], width, 1.0 - 0.18 * depth)
                forks = next_forks
    return layer.array(blur=blur)


def render_radiograph(
    findings: Sequence[Finding | str] = (),
    rng: np.random.Generator | None = None,
    size: int = 256,
    *,
    anatomy: Anatomy | None = None,
    view: str | None = None,
    devices: Sequence[str] = (),
) -> np.ndarray:
    """
    Draws a frontal chest radiograph showing `findings`.

    Args:
        findings: `Finding`s, or category names (drawn with a random side and severity); "no finding" or an empty
            sequence draws a normal chest.
        rng: the generator for everything random (default: a fresh unseeded one).
        size: height and width in pixels.
        anatomy: the patient and acquisition to draw; default: sampled from `rng` (with `view`).
        view: "PA" or "AP" when `anatomy` is sampled here; default: random (30% AP).
        devices: support devices to draw, from `DEVICES` ("ecg leads", "central line").

    Returns:
        `np.ndarray` of shape (size, size), dtype uint8: bright is dense (bone, fluid), dark is air.
    """
    rng = rng if rng is not None else np.random.default_rng()
    findings = [make_finding(f, rng) if isinstance(f, str) else f for f in findings if f != "no finding"]
    for device in devices:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    anatomy = anatomy if anatomy is not None else Anatomy.sample(rng, rng, view)
    scene = _Scene.create(anatomy, findings, rng, size)
    density, body, below, unevenness = _draw_body(scene)
    density, lungs, air, mediastinum, pleural_line = _draw_chest(scene, findings, density, below)
    density = _draw_spine_and_airway(scene, density, body, mediastinum)
    density = _draw_lung_markings(scene, findings, density, air, pleural_line)
    for finding in findings:  # findings inside the chest
        painter = LESION_PAINTERS.get(finding.name)
        if painter is not None:
            density = painter(density, finding, scene, lungs)
    # bones over everything
    density = density + BONE_DENSITY * _draw_bones(scene.geometry, anatomy, findings, size) * body
    if devices:
        density = density + 0.45 * _draw_devices(scene.geometry, anatomy, devices, rng, size)
    return _expose(scene, density, unevenness)


def _draw_body(scene: _Scene):
    """Soft tissue, and the abdomen under the hemidiaphragms; returns (density, body, below, unevenness)."""
    anatomy, geometry, yy, xx, edge, rng, size = (scene.anatomy, scene.geometry, scene.yy, scene.xx, scene.edge,
                                                  scene.rng, scene.size)
    # soft tissue: neck and shoulders widening into the chest wall
    body_half = geometry.width + anatomy.body_margin
    shoulders = _smoothstep((yy - (geometry.apex - 0.1)) / 0.16)
    half_width = 0.09 + (body_half - 0.09) * shoulders
    body = _soft(half_width - np.abs(xx - geometry.cx), edge * 2)
    # one low-frequency field for soft-tissue and abdominal unevenness and the film's heel effect
    unevenness = _smooth_noise(rng, size, 4)
    density = anatomy.soft_tissue * body * (1 + 0.06 * unevenness)

    # abdomen below the hemidiaphragms, with a gastric air bubble under the left one
    s_right, s_left = geometry.cx - xx, xx - geometry.cx
    floor = np.where(xx < geometry.cx, _diaphragm(geometry, "right", np.clip(s_right, 0, geometry.width)),
                     _diaphragm(geometry, "left", np.clip(s_left, 0, geometry.width)))
    below = _soft(yy - floor, edge)  # under the hemidiaphragms
    abdomen = below * body
    density = density + 0.2 * abdomen * (1 + 0.1 * unevenness)
    if anatomy.gastric_bubble:
        bubble = _soft(1 - np.hypot((xx - geometry.cx - 0.5 * geometry.width) / 0.05,
                                    (yy - geometry.dome["left"] - 0.055) / 0.028), 0.4)
        density = density - 0.12 * bubble * abdomen
    return density, body, below, unevenness


def _draw_chest(scene: _Scene, findings: Sequence[Finding], density, below):
    """Lungs, mediastinum and heart; returns (density, lungs, air, mediastinum, pleural_line)."""
    anatomy, geometry, yy, xx, edge, rng = scene.anatomy, scene.geometry, scene.yy, scene.xx, scene.edge, scene.rng
    # lungs: air in each pleural space, minus the mediastinum and heart; a pneumothorax retracts the lung
    mediastinum = _mediastinum_mask(geometry, anatomy, yy, xx, edge)
    heart = _heart_mask(geometry, yy, xx, edge)
    solid = np.clip(mediastinum + heart, 0, 1)
    lungs, aerated, pleural_line, retracted = {}, {}, np.zeros_like(density), []
    for side in SIDES:
        space, _ = _hemithorax(geometry, side, yy, xx, edge)
        lungs[side] = space * (1 - solid)
        aerated[side] = lungs[side]
        for finding in findings:
            if finding.name == "pneumothorax" and side in finding.sides:
                collapse = PNEUMOTHORAX_COLLAPSE[finding.severity]
                collapsed, distance = _hemithorax(geometry, side, yy, xx, edge, collapse * rng.uniform(0.9, 1.15))
                aerated[side] = collapsed * (1 - solid)
                retracted.append(side)
                pleural_line = np.maximum(pleural_line, _soft(0.0045 - np.abs(distance), edge) * lungs[side])
    lung = np.clip(lungs["right"] + lungs["left"], 0, 1)
    air = np.clip(aerated["right"] + aerated["left"], 0, 1)
    rim = np.clip(lung - air, 0, 1)  # pleural air: no lung markings, darker than the lung
    density = density - anatomy.lung_darkness * lung - 0.15 * rim
    for side in retracted:  # a collapsed lung holds less air: a little denser than its neighbour
        density = density + 0.04 * aerated[side]
    # the heart sits on the diaphragm: below it, heart and liver are one shadow
    density = _blend(density, 0.72, mediastinum * (1 - below))
    density = _blend(density, 0.7, heart * (1 - mediastinum) * (1 - below))
    return density, lungs, air, mediastinum, pleural_line


def _draw_spine_and_airway(scene: _Scene, density, body, mediastinum):
    """The spine and the trachea, seen through the mediastinum."""
    anatomy, geometry, yy, xx, edge, size = (scene.anatomy, scene.geometry, scene.yy, scene.xx, scene.edge,
                                             scene.size)
    spine = _soft(0.032 - np.abs(xx - geometry.mediastinum_x), edge)
    discs = (np.cos(2 * np.pi * (yy - geometry.apex) / (anatomy.rib_spacing * 0.85)) > 0.75).astype(np.float32)
    density = density + spine * body * (0.03 - 0.015 * discs)
    airway = _Layer(size)
    carina = (geometry.mediastinum_x + 0.005, geometry.apex + 0.17)
    airway.line([(geometry.mediastinum_x, 0.0), carina], 0.022)
    for sign in (-1, 1):
        airway.line([carina, (carina[0] + sign * 0.05, carina[1] + 0.045)], 0.014)
    density = density - 0.13 * airway.array() * mediastinum
    return density


def _draw_lung_markings(scene: _Scene, findings: Sequence[Finding], density, air, pleural_line):
    """Vessels and hila, absent from pleural air and blurred by interstitial fluid; parenchymal texture."""
    anatomy, geometry, yy, xx, rng, size = (scene.anatomy, scene.geometry, scene.yy, scene.xx, scene.rng,
                                            scene.size)
    edema = any(f.name == "edema" for f in findings)
    vessels = _draw_vessels(geometry, anatomy, rng, size, blur=0.006 if edema else 0.0)
    hila: float | np.ndarray = 0.0
    for side in SIDES:
        hx = geometry.mediastinum_x + _sign(side) * (anatomy.mediastinum_half_width + 0.02)
        hila = hila + _gaussian(yy, xx, geometry.hilum_y, hx, 0.05, 0.03)
    density = density + (0.1 * vessels + 0.1 * hila) * air
    density = density + 0.05 * air * np.clip(_smooth_noise(rng, size, 40), -1, 1)  # parenchymal texture
    density = density + 0.22 * pleural_line
    return density


def _expose(scene: _Scene, density, unevenness) -> np.ndarray:
    """The acquisition: exposure, contrast, tone curve, heel effect, quantum noise, then positioning."""
    anatomy, yy, rng, size = scene.anatomy, scene.yy, scene.rng, scene.size
    film = 0.5 + (density - 0.45) * anatomy.contrast + anatomy.exposure
    film = film * (1 + 0.04 * (yy - 0.5) + 0.03 * unevenness)
    film = np.clip(film, 0, 1) ** anatomy.gamma
    film = film + anatomy.noise * min(1.0, size / 256) * rng.standard_normal(film.shape, dtype=np.float32)
    return _position(np.clip(film, 0, 1).astype(np.float32), anatomy, size)


def _position(film: np.ndarray, anatomy: Anatomy, size: int) -> np.ndarray:
    """Rotates, scales and shifts the film about its centre (how the patient stood), then quantises it to 8 bits."""
    angle = math.radians(anatomy.rotation)
    cos, sin = math.cos(angle) / anatomy.scale, math.sin(angle) / anatomy.scale
    center = size / 2
    dx, dy = anatomy.shift[0] * size, anatomy.shift[1] * size
    # PIL maps each output pixel to an input pixel: input = A @ (output - center - shift) + center
    a, b, d, e = cos, sin, -sin, cos
    c = center - a * (center + dx) - b * (center + dy)
    f = center - d * (center + dx) - e * (center + dy)
    moved = Image.fromarray(film, mode="F").transform((size, size), Image.Transform.AFFINE, (a, b, c, d, e, f),
                                                      resample=Image.Resampling.BILINEAR, fillcolor=0.0)
    return (np.clip(np.asarray(moved), 0, 1) * 255 + 0.5).astype(np.uint8)


def _draw_devices(geometry: _Geometry, anatomy: Anatomy, devices: Sequence[str], rng, size: int) -> np.ndarray:
    layer = _Layer(size)
    if "ecg leads" in devices:
        for _ in range(int(rng.integers(2, 5))):
            x = geometry.cx + rng.uniform(-1.0, 1.0) * (geometry.width + 0.03)
            y = rng.uniform(geometry.apex + 0.05, geometry.dome["right"])
            layer.ellipse((x, y), (0.013, 0.013), 0.9)
            end = (x + rng.uniform(-0.2, 0.2), 1.0 if rng.random() < 0.5 else 0.0)
            bend = ((x + end[0]) / 2 + rng.uniform(-0.1, 0.1), (y + end[1]) / 2)
            layer.line([(x, y), bend, end], 0.004, 0.8)
    if "central line" in devices:
        # a right internal jugular catheter down the superior vena cava
        entry = (geometry.mediastinum_x - 0.09, 0.0)
        bend = (geometry.mediastinum_x - 0.055, geometry.apex + 0.08)
        tip = (geometry.mediastinum_x - 0.035, geometry.hilum_y + rng.uniform(-0.04, 0.02))
        layer.line([entry, bend, tip], 0.006, 1.0)
    return layer.array(blur=0.0015)


def sample_images(seed: int = 0, size: int = 256) -> list[tuple[str, np.ndarray]]:
    """One image per category (single finding, PA view, no devices) for looking at: [(category, image), ...]."""
    images = []
    for index, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, 99, index])
        anatomy = Anatomy.sample(np.random.default_rng([seed, 98]), rng, view="PA")
        findings = sample_findings(category, rng)
        images.append((category, render_radiograph(findings, rng, size, anatomy=anatomy)))
    return images


def save_sample_grid(path: str | os.PathLike, seed: int = 0, size: int = 256, columns: int = 4) -> Path:
    """
    Writes a PNG grid with one synthetic image per category, each titled with its category.

    All tiles show the same patient, so the differences between them are the findings.

    Args:
        path: the PNG file to write (folders are created).
        seed: which patient and findings to draw.
        size: tile size in pixels.
        columns: tiles per row.

    Returns:
        `Path` of the PNG.
    """
    tiles = sample_images(seed, size)
    title = 20
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new("L", (columns * size, rows * (size + title)), color=255)
    draw = ImageDraw.Draw(grid)
    for index, (category, array) in enumerate(tiles):
        x, y = (index % columns) * size, (index // columns) * (size + title)
        draw.text((x + 6, y + 4), category, fill=0)
        grid.paste(Image.fromarray(array, mode="L"), (x, y + title))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    return path


__all__ = ["BONE_DENSITY", "render_radiograph", "sample_images", "save_sample_grid"]
