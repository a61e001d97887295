"""A built-in synthetic corpus: chest-radiograph-like images with reports that describe them.

It lets the whole ConVIRT pipeline (pretraining, linear probe, retrieval) run offline on a laptop CPU in minutes and
show the paper's effects in miniature. Each image is a frontal chest film drawn from a patient's random anatomy (body
habitus, lung shape, heart size within normal limits, rib spacing) and a study's random acquisition (PA or AP view,
positioning, rotation, inspiration, exposure, contrast, noise, support devices). The eight categories of the paper's
retrieval set are drawn as large findings that stay visible when the image is shrunk to 64 pixels:

- atelectasis: a wedge of collapsed lower lobe at a lung base and, above it, a dense plate-like band, with volume loss
  (elevated hemidiaphragm, mediastinal shift towards the side); all of it always, as reports may describe any of it;
- cardiomegaly: a wide heart (cardiothoracic ratio 0.56 to 0.68 instead of about 0.42), an ellipse leaning less the
  wider it is, so it keeps a plausible shape;
- edema: bilateral perihilar ("bat-wing") haze, indistinct vessels and Kerley B lines;
- fracture: one to three consecutive posterior ribs broken at their posterolateral bend, each with a lucent gap and a
  step-off of the lateral fragment, and an extrapleural hematoma (a lens along the inner chest wall) at that level;
- pleural effusion: homogeneous fluid filling a lung base up to a meniscus, blunting the costophrenic angle;
- pneumonia: a large patchy consolidation with air bronchograms in one lung zone;
- pneumothorax: a black band without lung markings along the apex and lateral chest wall, a visible visceral
  pleural line and the collapsed lung's edge;
- no finding.

Sides are the patient's: the patient's left is on the image's right. Reports have FINDINGS and IMPRESSION sections,
several phrasings and synonyms per finding, laterality and severity words, normal statements and realistic negations
of absent findings ("No pleural effusion or pneumothorax."). Text queries (five per category) follow the style of the
paper's retrieval queries and are held out: the report templates never produce them verbatim.

Rows have the shared record columns plus ``category``, the scheduled primary category (see `SYNTHETIC_COLUMNS`).

Every row is drawn from generators seeded by (seed, split, patient) for the anatomy and (seed, split, row) for the
study, so a corpus is identical for a seed whatever the order or the number of processes that generate it, and
different for another seed.

    python -m convirt_hf.data.synthetic --output /tmp/synthetic --grid /tmp/synthetic_grid.png
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from datasets import Features, Value
from PIL import Image, ImageDraw, ImageFilter

from .records import RECORD_COLUMNS, RECORD_FEATURES, make_record
from .reports import prepare_report

logger = logging.getLogger(__name__)

CATEGORIES = (
    "atelectasis",
    "cardiomegaly",
    "edema",
    "fracture",
    "pleural effusion",
    "pneumonia",
    "pneumothorax",
    "no finding",
)
FINDINGS = CATEGORIES[:-1]
SPLITS = ("pretrain", "validation", "cls_train", "cls_val", "cls_test", "retrieval_candidates", "retrieval_queries")
RETRIEVAL_SPLITS = ("retrieval_candidates", "retrieval_queries")
# The corpus's rows: the shared record columns (`convirt_hf.data.records`) plus ``category``, the row's primary
# category: the class a classification or retrieval task should use. ``labels`` lists every finding present, the
# primary one first; with a second finding (combinations) it has two names, while ``category`` stays the one that the
# configured counts are exact for. Readers of the shared record shape ignore the extra column.
SYNTHETIC_COLUMNS = (*RECORD_COLUMNS, "category")
SYNTHETIC_FEATURES = Features({**RECORD_FEATURES, "category": Value("string")})
# Bump whenever drawing or report writing changes what a config produces: it is part of the cache key.
CORPUS_FORMAT_VERSION = 5

# Words that identify a category in text. Each category's text queries use some of its own and none of another's;
# the tests use them to check that reports mention every present finding and assert no absent one.
CATEGORY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "atelectasis": ("atelectasis", "atelectatic"),
    "cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "edema": ("edema", "kerley", "congestion"),
    "fracture": ("fracture",),
    "pleural effusion": ("effusion", "costophrenic"),
    "pneumonia": ("pneumonia", "consolidation", "airspace"),
    "pneumothorax": ("pneumothorax", "pneumothoraces"),
    "no finding": ("no acute", "no clinically significant", "normal chest", "lungs are clear", "no active disease"),
}

# Five held-out queries per category, in the style of the paper's radiologist-written ones: phrasings that the report
# templates below never produce verbatim (the tests check a generated pretraining split), so text->image retrieval
# needs the model to generalise over wording rather than recall a training sentence. Each describes only what every
# image of its category shows. The paper's two example queries are among them and are kept out of the templates.
TEXT_QUERIES: dict[str, list[str]] = {
    "atelectasis": [
        "Atelectasis at the lung base with volume loss.",
        "Discoid atelectasis in the lower lung.",
        "Elevated hemidiaphragm with basilar atelectasis.",
        "Collapse of the lower lobe, compatible with atelectasis.",
        "Band-like atelectasis at the left base.",
    ],
    "cardiomegaly": [
        "The cardiac silhouette is enlarged.",
        "Cardiomegaly is present.",
        "The heart is enlarged.",
        "Enlargement of the heart.",
        "Increased cardiothoracic ratio consistent with cardiomegaly.",
    ],
    "edema": [
        "Findings of pulmonary edema.",
        "Interstitial pulmonary edema with Kerley B lines.",
        "Perihilar haziness from pulmonary edema.",
        "Pulmonary vascular congestion and edema.",
        "Bilateral pulmonary edema.",
    ],
    "fracture": [
        "There is a rib fracture.",
        "Displaced posterior rib fracture.",
        "Rib fracture with an extrapleural hematoma.",
        "Multiple displaced rib fractures.",
        "Cortical step-off of a rib, consistent with fracture.",
    ],
    "pleural effusion": [
        "There is a pleural effusion.",
        "Large pleural effusion on the left.",
        "Blunting of the costophrenic angle consistent with effusion.",
        "Pleural fluid with a meniscus at the lung base, consistent with effusion.",
        "Bilateral pleural effusions are present.",
    ],
    "pneumonia": [
        "Consolidation concerning for pneumonia.",
        "Pneumonia in the right lung.",
        "Airspace opacity with air bronchograms, consistent with pneumonia.",
        "Patchy consolidation in the left lung.",
        "Focal airspace disease suggesting pneumonia.",
    ],
    "pneumothorax": [
        "There is a pneumothorax.",
        "Right apical pneumothorax.",
        "Visceral pleural line with absent lung markings peripherally, consistent with pneumothorax.",
        "Large pneumothorax on the left.",
        "Pneumothorax with partial collapse of the lung.",
    ],
    "no finding": [
        "No clinically significant radiographic abnormalities.",
        "The lungs are clear with no acute process.",
        "Normal chest x-ray.",
        "No acute cardiopulmonary disease.",
        "No active disease.",
    ],
}

SIDES = ("right", "left")
SEVERITIES = {
    "atelectasis": ("mild", "moderate"),
    "cardiomegaly": ("mild", "moderate", "severe"),
    "edema": ("mild", "moderate", "severe"),
    "pleural effusion": ("small", "moderate", "large"),
    "pneumothorax": ("small", "moderate", "large"),
}
# cardiothoracic ratio drawn for each cardiomegaly severity (a normal heart: 0.37 to 0.46, 0.02 more on AP films)
CARDIOTHORACIC_RATIOS = {"mild": (0.56, 0.59), "moderate": (0.59, 0.63), "severe": (0.63, 0.68)}
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
DEVICES = ("ecg leads", "central line")
BONE_DENSITY = 0.3


@dataclass(frozen=True)
class Finding:
    """One finding of an image.

    Args:
        name: a category of `FINDINGS`.
        side: the patient's "right" or "left", "bilateral", or `None` where laterality does not apply (cardiomegaly).
        severity: a word of `SEVERITIES[name]`, or `None` where the finding has none (pneumonia, fracture).
        zone: pneumonia: "upper", "middle" or "lower" lung zone.
        ribs: fracture: the broken posterior ribs, consecutive, numbered from the top (1 to 10).
        position: fracture: where along the rib the break is, from 0 (spine) to 1 (chest wall).
        step: fracture: vertical displacement of the lateral fragment, in image heights (signed).
    """

    name: str
    side: str | None = None
    severity: str | None = None
    zone: str | None = None
    ribs: tuple[int, ...] = ()
    position: float = 0.8
    step: float = 0.028

    @property
    def sides(self) -> tuple[str, ...]:
        return SIDES if self.side == "bilateral" else ((self.side,) if self.side else ())


def make_finding(name: str, rng: np.random.Generator) -> Finding:
    """A random instance of finding `name` (side, severity, location)."""
    if name not in FINDINGS:
        raise ValueError(f"unknown finding {name!r}; expected one of {FINDINGS}")
    side = SIDES[int(rng.integers(2))]
    if name == "cardiomegaly":
        return Finding(name, None, _pick(rng, SEVERITIES[name], (0.35, 0.4, 0.25)))
    if name == "edema":
        return Finding(name, "bilateral", _pick(rng, SEVERITIES[name], (0.35, 0.4, 0.25)))
    if name == "atelectasis":
        return Finding(name, "bilateral" if rng.random() < 0.2 else side, _pick(rng, SEVERITIES[name]))
    if name == "pleural effusion":
        return Finding(name, "bilateral" if rng.random() < 0.2 else side,
                       _pick(rng, SEVERITIES[name], (0.3, 0.4, 0.3)))
    if name == "pneumothorax":
        return Finding(name, side, _pick(rng, SEVERITIES[name], (0.3, 0.4, 0.3)))
    if name == "pneumonia":
        return Finding(name, side, None, zone=_pick(rng, ("upper", "middle", "lower")))
    # consecutive ribs crossing the mid and lower lung fields (4 to 8), broken in a row at their posterolateral bend,
    # where ribs usually break
    count = int(_pick(rng, (1, 2, 3), (0.35, 0.4, 0.25)))
    first = int(rng.integers(4, 10 - count))
    step = float(rng.uniform(0.024, 0.034)) * (1 if rng.random() < 0.5 else -1)
    return Finding(name, side, None, ribs=tuple(range(first, first + count)), position=float(rng.uniform(0.72, 0.86)),
                   step=step)


def sample_findings(
    primary: str,
    rng: np.random.Generator,
    second_probability: float = 0.0,
    weights: dict[str, float] | None = None,
) -> list[Finding]:
    """
    The findings of one image: `primary` and, with probability `second_probability`, one other finding.

    Args:
        primary: a category of `CATEGORIES`; "no finding" gives an empty list.
        rng: the study's generator.
        second_probability: chance of a second, different finding (combinations such as cardiomegaly + edema).
        weights: relative weights for choosing the second finding (default: uniform).

    Returns:
        `list[Finding]`, the primary finding first.
    """
    if primary not in CATEGORIES:
        raise ValueError(f"unknown category {primary!r}; expected one of {CATEGORIES}")
    if primary == "no finding":
        return []
    findings = [make_finding(primary, rng)]
    if second_probability > 0 and rng.random() < second_probability:
        others = [name for name in FINDINGS if name != primary]
        chances = np.array([(weights or {}).get(name, 1.0) for name in others], dtype=np.float64)
        if chances.sum() > 0:
            second = others[int(rng.choice(len(others), p=chances / chances.sum()))]
            findings.append(make_finding(second, rng))
    return findings


def _pick(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    if p is None:
        return options[int(rng.integers(len(options)))]
    return options[int(rng.choice(len(options), p=np.asarray(p) / np.sum(p)))]


# --- anatomy -----------------------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """A patient's chest and one study's acquisition, in unit image coordinates (x to the right, y down)."""

    # the patient
    thorax_half_width: float
    body_margin: float
    apex_y: float
    dome_y: float
    left_dome_drop: float
    sulcus_depth: float
    mediastinum_half_width: float
    aortic_knob: float
    ctr: float
    heart_height: float
    heart_tilt: float
    rib_spacing: float
    rib_width: float
    rib_slope: float
    lung_darkness: float
    soft_tissue: float
    gastric_bubble: bool
    # the study
    view: str
    center_x: float
    inspiration: float
    rotation: float
    scale: float
    shift: tuple[float, float]
    exposure: float
    contrast: float
    gamma: float
    noise: float

    @classmethod
    def sample(cls, patient_rng: np.random.Generator, study_rng: np.random.Generator | None = None,
               view: str | None = None) -> Anatomy:
        """Draws a patient from `patient_rng` and a study of them from `study_rng` (default: the same generator)."""
        if view not in (None, "PA", "AP"):
            raise ValueError(f"view must be 'PA' or 'AP', got {view!r}")
        p, s = patient_rng, study_rng if study_rng is not None else patient_rng
        patient = dict(
            thorax_half_width=p.uniform(0.33, 0.41),
            body_margin=p.uniform(0.05, 0.11),
            apex_y=p.uniform(0.10, 0.15),
            dome_y=p.uniform(0.64, 0.71),
            left_dome_drop=p.uniform(0.005, 0.03),
            sulcus_depth=p.uniform(0.06, 0.09),
            mediastinum_half_width=p.uniform(0.062, 0.08),
            aortic_knob=p.uniform(0.012, 0.03),
            ctr=p.uniform(0.37, 0.46),
            heart_height=p.uniform(0.25, 0.29),
            heart_tilt=p.uniform(0.35, 0.55),
            rib_spacing=p.uniform(0.048, 0.058),
            rib_width=p.uniform(0.016, 0.021),
            rib_slope=p.uniform(0.85, 1.15),
            lung_darkness=p.uniform(0.27, 0.33),
            soft_tissue=p.uniform(0.46, 0.54),
            gastric_bubble=bool(p.random() < 0.6),
        )
        view = view or ("AP" if s.random() < 0.3 else "PA")
        portable = view == "AP"
        study = dict(
            view=view,
            center_x=0.5 + s.uniform(-0.03, 0.03),
            inspiration=s.uniform(-0.02, 0.02) - (0.02 if portable else 0.0),
            rotation=s.uniform(-6, 6) if portable else s.uniform(-3.5, 3.5),
            scale=s.uniform(0.92, 1.05),
            shift=(float(s.uniform(-0.025, 0.025)), float(s.uniform(-0.03, 0.03))),
            exposure=s.uniform(-0.07, 0.07),
            contrast=s.uniform(0.85, 1.15),
            gamma=s.uniform(0.85, 1.2),
            noise=s.uniform(0.012, 0.026) * (1.25 if portable else 1.0),
        )
        values = {**patient, **study}
        return cls(**{k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in values.items()})


# --- drawing helpers ---------------------------------------------------------------------------------------------


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
    return np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC)) / 2.5


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


@dataclass
class _Geometry:
    """Positions derived from an anatomy and the findings that change it (volume loss, cardiomegaly)."""

    cx: float
    mediastinum_x: float
    width: float
    apex: float
    dome: dict
    sulcus: dict
    hilum_y: float
    heart: tuple  # center x, center y, semi-axis a, semi-axis b, tilt


def _geometry(anatomy: Anatomy, findings: Sequence[Finding], rng: np.random.Generator) -> _Geometry:
    dome = {"right": anatomy.dome_y + anatomy.inspiration,
            "left": anatomy.dome_y + anatomy.inspiration + anatomy.left_dome_drop}
    shift = 0.0
    for finding in findings:
        if finding.name == "atelectasis":
            elevation = {"mild": 0.05, "moderate": 0.075}[finding.severity] + rng.uniform(0.0, 0.02)
            for side in finding.sides:
                dome[side] -= elevation * (0.7 if finding.side == "bilateral" else 1.0)
            if finding.side != "bilateral":  # volume loss pulls the mediastinum towards the collapsed side
                shift += (-1 if finding.side == "right" else 1) * rng.uniform(0.012, 0.022)
    sulcus = {side: dome[side] + anatomy.sulcus_depth for side in SIDES}
    ctr = anatomy.ctr + (0.02 if anatomy.view == "AP" else 0.0)  # AP films magnify the heart a little
    heart_height = anatomy.heart_height
    cardiomegaly = next((f for f in findings if f.name == "cardiomegaly"), None)
    if cardiomegaly is not None:
        ctr = rng.uniform(*CARDIOTHORACIC_RATIOS[cardiomegaly.severity])
        heart_height *= rng.uniform(1.08, 1.18)
    width = anatomy.thorax_half_width
    mediastinum_x = anatomy.center_x + shift
    # the heart is an ellipse tilted with its apex down and to the patient's left; solve its semi-axes from the
    # horizontal half-extent (set by the cardiothoracic ratio) and the vertical one
    # The long axis runs from the base (the patient's upper right) to the apex: a heart taller than wide would lean the
    # other way, so a narrow normal heart is kept a little wider than tall.
    extent_x = ctr * width
    extent_y = min(heart_height / 2, 0.95 * extent_x)
    # Semi-axes exist only while tan(tilt) < extent_y / extent_x, and the short one shrinks to nothing as tan(tilt)
    # nears that bound: a wide, flat heart (severe cardiomegaly) tilted as much as a normal one degenerated into a
    # streak. Capping tan(tilt) at 0.6 of the bound keeps the axis ratio b/a at least 0.8 of the untilted heart's
    # (extent_y / extent_x * sqrt(1 - 0.6**2)): a wide heart simply leans less.
    tilt = min(anatomy.heart_tilt, math.atan(0.6 * extent_y / extent_x))
    cos2, sin2 = math.cos(tilt) ** 2, math.sin(tilt) ** 2
    det = cos2 - sin2
    a2 = (extent_x**2 * cos2 - extent_y**2 * sin2) / det
    b2 = (extent_y**2 * cos2 - extent_x**2 * sin2) / det
    mean_dome = (dome["right"] + dome["left"]) / 2
    # the widest point of the tilted heart (its apex, on the patient's left) lies below its centre; keep it just above
    # the diaphragm so the cardiothoracic ratio seen on the film is the one drawn
    drop = (a2 - b2) * math.sin(tilt) * math.cos(tilt) / extent_x
    heart_center = (mediastinum_x + 0.36 * extent_x, min(dome["right"], dome["left"]) - 0.015 - drop)
    return _Geometry(
        cx=anatomy.center_x, mediastinum_x=mediastinum_x, width=width, apex=anatomy.apex_y, dome=dome,
        sulcus=sulcus, hilum_y=anatomy.apex_y + 0.36 * (mean_dome - anatomy.apex_y),
        heart=(heart_center[0], heart_center[1], math.sqrt(a2), math.sqrt(b2), tilt),
    )


def _sign(side: str) -> float:
    """Direction of the patient's `side` in the image: the patient's right is the image's left."""
    return -1.0 if side == "right" else 1.0


def _lateral_wall(geometry: _Geometry, side: str, yy):
    t = np.clip((yy - geometry.apex) / (geometry.sulcus[side] - geometry.apex), 0.0, 1.0)
    return geometry.width * (0.40 + 0.60 * (1 - (1 - t) ** 2.6) ** 0.55)


def _apex_cap(geometry: _Geometry, s):
    return geometry.apex + 0.4 * ((s - 0.42 * geometry.width) / geometry.width) ** 2


def _diaphragm(geometry: _Geometry, side: str, s):
    """y of the hemidiaphragm at lateral offset s from the midline (the dome peaks at about 40% of the width)."""
    top, peak = geometry.dome[side], 0.4 * geometry.width
    lateral = top + (geometry.sulcus[side] - top) * (np.clip(s - peak, 0, None) / (geometry.width - peak)) ** 2
    medial = top + 0.03 * (np.clip(peak - s, 0, None) / peak) ** 2
    return np.where(s > peak, lateral, medial)


def _hemithorax(geometry: _Geometry, side: str, yy, xx, edge: float, collapse: float = 0.0):
    """The pleural space of one side (soft mask); `collapse` > 0 gives the lung retracted from apex and wall."""
    s = _sign(side) * (xx - geometry.cx)
    t = np.clip((yy - geometry.apex) / (geometry.sulcus[side] - geometry.apex), 0.0, 1.0)
    wall = _lateral_wall(geometry, side, yy) - collapse * (0.65 + 0.45 * (1 - t))
    cap = _apex_cap(geometry, s) + 1.5 * collapse
    floor = _diaphragm(geometry, side, s) - 0.3 * collapse
    mask = _soft(wall - s, edge) * _soft(yy - cap, edge) * _soft(floor - yy, edge) * _soft(s, edge)
    return mask, np.minimum(wall - s, yy - cap)


def _mediastinum_mask(geometry: _Geometry, anatomy: Anatomy, yy, xx, edge: float):
    dx = xx - geometry.mediastinum_x
    half = anatomy.mediastinum_half_width
    knob_y = geometry.apex + 0.13
    left = half + anatomy.aortic_knob * np.exp(-(((yy - knob_y) / 0.035) ** 2))
    right = half * (0.9 + 0.1 * np.clip((yy - geometry.apex) / 0.2, 0, 1))  # superior vena cava
    inside = np.where(dx > 0, left - dx, right + dx)
    # above the lung apices the neck is soft tissue, not mediastinum
    return _soft(inside, edge) * _smoothstep((yy - geometry.apex + 0.06) / 0.1)


def _heart_mask(geometry: _Geometry, yy, xx, edge: float):
    hx, hy, a, b, tilt = geometry.heart
    u = (xx - hx) * math.cos(tilt) + (yy - hy) * math.sin(tilt)
    v = -(xx - hx) * math.sin(tilt) + (yy - hy) * math.cos(tilt)
    radius = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return _soft((1 - radius) * min(a, b), edge)


# where a posterior rib's polyline has its vertices, from the spine (0) to the chest wall (1)
RIB_VERTICES = tuple(np.linspace(0.0, 1.0, 14).tolist())


def _rib_points(geometry: _Geometry, anatomy: Anatomy, side: str, number: int, along: Sequence[float] = RIB_VERTICES):
    """Points of a posterior rib (numbered from the top) at positions `along` it, from spine (0) to chest wall (1)."""
    sign = _sign(side)
    y0 = geometry.apex - 0.03 + (number - 1) * anatomy.rib_spacing
    width = geometry.width
    slope = anatomy.rib_slope * (0.9 + 0.025 * number)
    points = []
    for v in along:
        s = 0.035 + v * (width + 0.03 - 0.035)
        y = y0 + width * slope * (-0.3 * v + 0.95 * v**2)
        points.append((geometry.cx + sign * s, y))
    return points


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


# --- findings ----------------------------------------------------------------------------------------------------


def _blend(density, target: float, alpha):
    return density + (target - density) * alpha


def _draw_effusion(density, finding, geometry, yy, xx, lungs, rng, edge):
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


def _draw_pneumonia(density, finding, geometry, yy, xx, lungs, rng, size):
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


def _draw_hematoma(density, finding, geometry, anatomy, yy, xx, lungs, rng, edge):
    """An extrapleural hematoma: a lens of blood along the inner chest wall at the level of the broken ribs."""
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


def _draw_atelectasis(density, finding, geometry, yy, xx, lungs, rng, edge):
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


def _draw_edema(density, finding, geometry, anatomy, yy, xx, lungs, rng, size):
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


# --- the film ----------------------------------------------------------------------------------------------------


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
    geometry = _geometry(anatomy, findings, rng)
    edge = 1.5 / size
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    # a column of y and a row of x: functions of one coordinate stay 1-D and broadcast only when combined
    yy, xx = coords[:, None], coords[None, :]

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
                collapse = {"small": 0.05, "moderate": 0.08, "large": 0.115}[finding.severity]
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

    # spine and trachea seen through the mediastinum
    spine = _soft(0.032 - np.abs(xx - geometry.mediastinum_x), edge)
    discs = (np.cos(2 * np.pi * (yy - geometry.apex) / (anatomy.rib_spacing * 0.85)) > 0.75).astype(np.float32)
    density = density + spine * body * (0.03 - 0.015 * discs)
    airway = _Layer(size)
    carina = (geometry.mediastinum_x + 0.005, geometry.apex + 0.17)
    airway.line([(geometry.mediastinum_x, 0.0), carina], 0.022)
    for sign in (-1, 1):
        airway.line([carina, (carina[0] + sign * 0.05, carina[1] + 0.045)], 0.014)
    density = density - 0.13 * airway.array() * mediastinum

    # lung markings: vessels and hila, absent from pleural air, blurred by interstitial fluid
    edema = any(f.name == "edema" for f in findings)
    vessels = _draw_vessels(geometry, anatomy, rng, size, blur=0.006 if edema else 0.0)
    hila = 0.0
    for side in SIDES:
        hx = geometry.mediastinum_x + _sign(side) * (anatomy.mediastinum_half_width + 0.02)
        hila = hila + _gaussian(yy, xx, geometry.hilum_y, hx, 0.05, 0.03)
    density = density + (0.1 * vessels + 0.1 * hila) * air
    density = density + 0.05 * air * np.clip(_smooth_noise(rng, size, 40), -1, 1)  # parenchymal texture
    density = density + 0.22 * pleural_line

    # findings inside the chest
    for finding in findings:
        if finding.name == "pleural effusion":
            density = _draw_effusion(density, finding, geometry, yy, xx, lungs, rng, edge)
        elif finding.name == "pneumonia":
            density = _draw_pneumonia(density, finding, geometry, yy, xx, lungs, rng, size)
        elif finding.name == "atelectasis":
            density = _draw_atelectasis(density, finding, geometry, yy, xx, lungs, rng, edge)
        elif finding.name == "fracture":
            density = _draw_hematoma(density, finding, geometry, anatomy, yy, xx, lungs, rng, edge)
        elif finding.name == "edema":
            density = _draw_edema(density, finding, geometry, anatomy, yy, xx, lungs, rng, size)

    # bones over everything
    density = density + BONE_DENSITY * _draw_bones(geometry, anatomy, findings, size) * body

    if devices:
        density = density + 0.45 * _draw_devices(geometry, anatomy, devices, rng, size)

    # acquisition: exposure, contrast, tone curve, heel effect, quantum noise, positioning
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
    moved = Image.fromarray(film, mode="F").transform((size, size), Image.AFFINE, (a, b, c, d, e, f),
                                                      resample=Image.BILINEAR, fillcolor=0.0)
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


# --- reports -----------------------------------------------------------------------------------------------------


def _lobe(side: str, zone: str) -> tuple[str, str]:
    """(noun phrase, adjective) of a lung zone: ("right lower lobe", "right lower lobe"), ("lingula", "lingular")."""
    if side == "left" and zone == "middle":
        return "lingula", "lingular"
    return f"{side} {zone} lobe", f"{side} {zone} lobe"


def _ribs_phrase(finding: Finding) -> tuple[str, bool]:
    names = [ORDINALS[rib - 1] for rib in finding.ribs]
    joined = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return joined, len(names) > 1


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _positive_sentences(finding: Finding) -> tuple[list[str], list[str]]:
    """(FINDINGS phrasings, IMPRESSION phrasings) asserting `finding`; each names it and no other category."""
    side, severity = finding.side, finding.severity
    name = finding.name
    if name == "cardiomegaly":
        adjective = {"mild": "mild", "moderate": "moderate", "severe": "marked"}[severity]
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[severity]
        return ([
            "The cardiac silhouette appears enlarged.",
            f"The heart is {adverb} enlarged.",
            f"{adjective} cardiomegaly.",
            "Enlarged cardiac silhouette.",
            "Heart size is increased, compatible with cardiomegaly.",
            f"There is {adjective} enlargement of the cardiac silhouette.",
            "Enlarged heart size.",
        ], ["Cardiomegaly.", f"{adjective} cardiomegaly.", "Enlarged cardiac silhouette."])
    if name == "edema":
        return ([
            "Bilateral perihilar opacities consistent with pulmonary edema.",
            f"There is {severity} pulmonary edema.",
            "Interstitial edema with Kerley B lines.",
            f"Findings are compatible with {severity} interstitial pulmonary edema.",
            "Pulmonary vascular congestion with interstitial edema.",
            "Perihilar haziness and indistinct pulmonary vessels, consistent with edema.",
            f"{severity} pulmonary edema with Kerley B lines at the lung bases.",
        ], ["Pulmonary edema.", f"{severity} pulmonary edema.", "Findings consistent with interstitial edema."])
    if name == "atelectasis":
        level = "" if severity == "moderate" else "mild "
        if side == "bilateral":
            return ([
                f"{level}bibasilar atelectasis.",
                "Plate-like atelectasis at both lung bases.",
                "Linear opacities at both lung bases, consistent with atelectasis.",
                "There is bibasilar atelectasis with elevation of both hemidiaphragms.",
            ], ["Bibasilar atelectasis.", f"{level}bibasilar atelectasis."])
        return ([
            f"{level}{side} basilar atelectasis.",
            f"Linear opacity at the {side} lung base, consistent with atelectasis.",
            f"Plate-like atelectasis at the {side} base with elevation of the {side} hemidiaphragm.",
            f"Volume loss in the {side} lower lobe consistent with atelectasis.",
            f"There is {side} lower lobe atelectasis.",
            f"Elevation of the {side} hemidiaphragm with adjacent atelectasis.",
            f"{side} basilar opacity likely reflects atelectasis.",
        ], [f"{side} basilar atelectasis.", f"Atelectasis at the {side} lung base.",
            f"{side} lower lobe atelectasis."])
    if name == "fracture":
        ribs, plural = _ribs_phrase(finding)
        if plural:
            return ([
                f"There are fractures of the {side} {ribs} posterior ribs.",
                f"{side} {ribs} rib fractures.",
                f"Displaced fractures of the {side} {ribs} posterior ribs.",
                f"Fractures of the {side} {ribs} ribs with an adjacent extrapleural hematoma.",
                f"Multiple {side} rib fractures involving the {ribs} ribs.",
            ], [f"{side} rib fractures.", f"Multiple {side} rib fractures.",
                f"Displaced {side} {ribs} rib fractures."])
        return ([
            f"There is a fracture of the {side} {ribs} posterior rib.",
            f"{side} {ribs} rib fracture.",
            f"Displaced fracture of the {side} {ribs} posterior rib.",
            f"Cortical break with step-off in the {side} {ribs} rib, consistent with fracture.",
            f"Fracture of the {side} {ribs} rib with an extrapleural hematoma.",
            f"Displaced {side} {ribs} rib fracture with an adjacent extrapleural hematoma.",
        ], [f"{side} rib fracture.", f"Displaced {side} {ribs} rib fracture.", f"{side} {ribs} rib fracture."])
    if name == "pleural effusion":
        if side == "bilateral":
            return ([
                f"{severity} bilateral pleural effusions.",
                "There are bilateral pleural effusions.",
                "Blunting of both costophrenic angles due to pleural effusions.",
                f"{severity} bilateral pleural effusions with menisci.",
            ], [f"{severity} bilateral pleural effusions.", "Bilateral pleural effusions."])
        sentences = [
            f"{severity} {side} pleural effusion.",
            f"There is a {severity} {side} pleural effusion.",
            f"{side} pleural effusion with a meniscus.",
            f"A {severity} {side} pleural effusion obscures the {side} hemidiaphragm.",
            f"Layering {side} pleural effusion.",
        ]
        if severity == "small":
            sentences.append(f"Blunting of the {side} costophrenic angle due to a small pleural effusion.")
        return sentences, [f"{severity} {side} pleural effusion.", f"{side} pleural effusion."]
    if name == "pneumonia":
        lobe, adjective = _lobe(side, finding.zone)
        return ([
            f"Focal consolidation in the {lobe} concerning for pneumonia.",
            f"{adjective} pneumonia.",
            f"Patchy airspace opacity in the {lobe}, consistent with pneumonia.",
            f"There is consolidation in the {lobe} with air bronchograms.",
            f"Dense consolidation in the {lobe}.",
            f"Airspace consolidation in the {lobe}, compatible with pneumonia.",
        ], [f"{adjective} pneumonia.", f"Consolidation in the {lobe}, concerning for pneumonia.",
            f"Findings concerning for {adjective} pneumonia."])
    if name == "pneumothorax":
        return ([
            f"There is a {severity} {side} pneumothorax.",
            f"{side} pneumothorax with a visible visceral pleural line.",
            f"{severity} {side} apical pneumothorax.",
            f"A {severity} {side} pneumothorax is present.",
            f"Visceral pleural line along the {side} apex and lateral chest wall, consistent with pneumothorax.",
        ], [f"{severity} {side} pneumothorax.", f"{side} pneumothorax."])
    raise ValueError(f"unknown finding {name!r}")


# Statements for findings a report does not have. Keys are the absent findings a statement covers; a statement is
# only used when all of them are absent.
NEGATIONS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("cardiomegaly",): ("Heart size is normal.", "The cardiac silhouette is within normal limits.",
                        "Normal cardiomediastinal silhouette.", "The heart is not enlarged.", "No cardiomegaly."),
    ("pleural effusion",): ("No pleural effusion.", "There is no pleural effusion.",
                            "No blunting of the costophrenic angles."),
    ("pneumothorax",): ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
    ("pleural effusion", "pneumothorax"): ("No pleural effusion or pneumothorax.",
                                           "There is no pleural effusion or pneumothorax.",
                                           "No pneumothorax or pleural effusion."),
    ("pleural effusion", "pneumonia", "pneumothorax"): (
        "There is no focal consolidation, pleural effusion, or pneumothorax.",
        "No focal consolidation, effusion, or pneumothorax."),
    ("pneumonia",): ("No focal consolidation.", "There is no focal consolidation to suggest pneumonia.",
                     "No focal airspace consolidation."),
    ("edema",): ("No pulmonary edema.", "There is no pulmonary vascular congestion or edema.",
                 "No evidence of pulmonary edema."),
    ("fracture",): ("No displaced rib fracture.", "No acute rib fracture is seen.", "There is no fracture."),
    ("atelectasis",): ("No atelectasis.", "There is no atelectasis."),
}
CLEAR_LUNGS = ("The lungs are clear.", "Lungs are well expanded and clear.", "The lungs are clear bilaterally.")
NORMAL_BONES = ("Osseous structures are unremarkable.", "The visualized osseous structures are intact.",
                "No acute osseous abnormality.")
NO_FINDING_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                          "Normal chest radiograph.", "No acute radiographic abnormality.",
                          "No active disease in the chest.")
DEVICE_SENTENCES = {
    "ecg leads": ("ECG leads overlie the chest.", "Cardiac monitoring leads are present."),
    "central line": ("A right internal jugular central venous catheter terminates in the SVC.",
                     "Right IJ line with tip in the superior vena cava."),
}
VIEW_SENTENCES = {"AP": ("Single portable AP view of the chest.", "Portable upright AP radiograph of the chest."),
                  "PA": ("Frontal view of the chest.", "PA view of the chest.")}


def write_report(
    findings: Sequence[Finding],
    rng: np.random.Generator,
    *,
    devices: Sequence[str] = (),
    view: str | None = None,
) -> str:
    """
    Writes a radiology report describing `findings`.

    Args:
        findings: the findings in the image (empty for "no finding").
        rng: the generator choosing phrasings, which normal statements to include and their order.
        devices: support devices drawn in the image; the report mentions them.
        view: "PA" or "AP"; sometimes mentioned in the first sentence.

    Returns:
        `str`: ``"FINDINGS: ... \\nIMPRESSION: ..."``. Every present finding is asserted in both sections (with its
        side and severity); absent findings are only ever negated ("No pneumothorax."), never asserted.
    """
    present = {finding.name for finding in findings}
    positives, impressions = [], []
    for finding in findings:
        body, summary = _positive_sentences(finding)
        positives.append(_capitalize(_pick(rng, body)))
        impressions.append(_capitalize(_pick(rng, summary)))

    # normal statements for (some of) the absent findings, combined statements where they apply
    normal = []
    absent = [name for name in FINDINGS if name not in present]
    covered: set[str] = set()
    for keys in rng.permutation(len(NEGATIONS)):
        names, options = list(NEGATIONS.items())[int(keys)]
        if set(names) <= set(absent) and not set(names) & covered and rng.random() < 0.45:
            normal.append(_pick(rng, options))
            covered.update(names)
    if not present & {"pneumonia", "edema", "atelectasis", "pleural effusion", "pneumothorax"} and rng.random() < 0.6:
        normal.append(_pick(rng, CLEAR_LUNGS))
    if "fracture" not in present and rng.random() < 0.3:
        normal.append(_pick(rng, NORMAL_BONES))
    if not findings and len(normal) < 2:  # a normal study still says what is normal
        normal.append(_pick(rng, NEGATIONS[("pleural effusion", "pneumothorax")]))
        normal.append(_pick(rng, NEGATIONS[("cardiomegaly",)]))
        normal = list(dict.fromkeys(normal))
    extras = [_pick(rng, DEVICE_SENTENCES[device]) for device in devices]

    if rng.random() < 0.7:  # positives first, as most reports do; otherwise in anatomical disorder
        body = positives + [normal[i] for i in rng.permutation(len(normal))]
    else:
        mixed = positives + normal
        body = [mixed[i] for i in rng.permutation(len(mixed))]
    body += extras
    if view in VIEW_SENTENCES and rng.random() < 0.25:
        body.insert(0, _pick(rng, VIEW_SENTENCES[view]))

    if not impressions:
        impression = _pick(rng, NO_FINDING_IMPRESSIONS)
    elif len(impressions) == 1:
        impression = impressions[0]
    elif rng.random() < 0.6:
        impression = " ".join(f"{i + 1}. {sentence}" for i, sentence in enumerate(impressions))
    else:
        impression = " ".join(impressions)
    return f"FINDINGS: {' '.join(body)}\nIMPRESSION: {impression}"


# --- corpus ------------------------------------------------------------------------------------------------------


def _default_weights() -> dict[str, float]:
    return {category: 1.0 for category in CATEGORIES}


@dataclass
class SyntheticCorpusConfig:
    """
    What the synthetic corpus holds. Everything here is part of the cache key (see `ensure_synthetic_corpus`).

    Args:
        seed: the corpus seed; the same seed gives byte-identical images and texts.
        image_size: height and width of the stored images (the preprocessing step's 256 by default; training
            shrinks them further, e.g. to 64 pixels for the CPU demo).
        num_pretrain, num_validation: image-report pairs for pretraining and its validation loss.
        num_cls_train, num_cls_val, num_cls_test: labelled images for the classification tasks (linear probe,
            fine-tuning); reports are included too. 2000 training images make the paper's 1% label fraction 20
            images, a little more than two per class of the 8-class task.
        retrieval_candidates_per_category: candidate images per category in the retrieval set (the paper: 200),
            each with exactly one category.
        retrieval_queries_per_category: query images per category (the paper: 10), each with exactly one category.
        second_finding_probability: chance that a row of the non-retrieval splits has a second finding.
        device_probability: chance that an image shows support devices (ECG leads, a central line), which its report
            mentions: content that is unrelated to the labels.
        category_weights: relative frequency of each category as the primary finding of the non-retrieval splits;
            categories left out weigh 1. The counts are exact (largest remainder), not sampled.
        studies_per_patient: consecutive rows of the non-retrieval splits share a patient (same anatomy, new study).
    """

    seed: int = 0
    image_size: int = 256
    num_pretrain: int = 3000
    num_validation: int = 300
    num_cls_train: int = 2000
    num_cls_val: int = 400
    num_cls_test: int = 800
    retrieval_candidates_per_category: int = 50
    retrieval_queries_per_category: int = 10
    second_finding_probability: float = 0.25
    device_probability: float = 0.15
    category_weights: dict[str, float] = field(default_factory=_default_weights)
    studies_per_patient: int = 2

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"SyntheticCorpusConfig.image_size must be >= 16, got {self.image_size}")
        for name in ("num_pretrain", "num_validation", "num_cls_train", "num_cls_val", "num_cls_test",
                     "retrieval_candidates_per_category", "retrieval_queries_per_category"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be an integer >= 0, got {value!r}")
        if self.num_pretrain == 0:
            raise ValueError("SyntheticCorpusConfig.num_pretrain must be > 0")
        for name in ("second_finding_probability", "device_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.studies_per_patient < 1:
            raise ValueError(f"SyntheticCorpusConfig.studies_per_patient must be >= 1, got {self.studies_per_patient}")
        unknown = set(self.category_weights) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"SyntheticCorpusConfig.category_weights has unknown categories {sorted(unknown)}; "
                             f"expected names from {CATEGORIES}")
        weights = {category: float(self.category_weights.get(category, 1.0)) for category in CATEGORIES}
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"SyntheticCorpusConfig.category_weights must be finite, >= 0 and not all 0, got {weights}"
            )
        self.category_weights = weights

    def split_sizes(self) -> dict[str, int]:
        """Rows per split, in `SPLITS` order."""
        return {
            "pretrain": self.num_pretrain,
            "validation": self.num_validation,
            "cls_train": self.num_cls_train,
            "cls_val": self.num_cls_val,
            "cls_test": self.num_cls_test,
            "retrieval_candidates": self.retrieval_candidates_per_category * len(CATEGORIES),
            "retrieval_queries": self.retrieval_queries_per_category * len(CATEGORIES),
        }

    def to_dict(self) -> dict:
        """The config with the corpus format version: what `corpus_config.json` holds and the cache key hashes."""
        return {**asdict(self), "format": CORPUS_FORMAT_VERSION}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict) -> SyntheticCorpusConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@lru_cache(maxsize=32)
def _schedule(weights: tuple[float, ...], count: int) -> np.ndarray:
    """
    Index into `CATEGORIES` of each row's primary category: exact counts proportional to `weights` (largest
    remainder), interleaved so that every prefix of a split is close to the requested mix. Built once per (weights,
    count), so looking up a row is O(1) however large the split (a million rows: 0.05 s, once).
    """
    weights_ = np.asarray(weights, dtype=np.float64)
    exact = weights_ / weights_.sum() * count
    quotas = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - quotas), kind="stable")[: count - quotas.sum()]:
        quotas[index] += 1
    # category c takes the slots (j + 0.5) / quota_c, j < quota_c; rows follow the slots in order, ties by category
    slots = np.concatenate([(np.arange(quota) + 0.5) / quota for quota in quotas if quota] or [np.zeros(0)])
    owners = np.repeat(np.arange(len(quotas), dtype=np.int8), quotas)
    schedule = owners[np.lexsort((owners, slots))]
    schedule.flags.writeable = False  # shared by every caller through the cache
    return schedule


def primary_category(config: SyntheticCorpusConfig, split: str, index: int) -> str:
    """The primary category of row `index` of `split` (the row's `category` column)."""
    count = config.split_sizes()[split]
    if not 0 <= index < count:
        raise IndexError(f"row {index} is out of range for the {count} rows of {split!r}")
    if split in RETRIEVAL_SPLITS:  # each category in turn
        return CATEGORIES[index % len(CATEGORIES)]
    weights = tuple(config.category_weights[category] for category in CATEGORIES)
    return CATEGORIES[int(_schedule(weights, count)[index])]


def primary_categories(config: SyntheticCorpusConfig, split: str) -> list[str]:
    """The primary category of every row of `split` (retrieval splits: each category in turn)."""
    count = config.split_sizes()[split]
    if split in RETRIEVAL_SPLITS:
        return [CATEGORIES[index % len(CATEGORIES)] for index in range(count)]
    weights = tuple(config.category_weights[category] for category in CATEGORIES)
    return [CATEGORIES[index] for index in _schedule(weights, count).tolist()]


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit grayscale image (mode "L")."""
    buffer = io.BytesIO()
    # level 1: twice as fast as the default for about 15% more bytes on these noisy films
    Image.fromarray(array, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def generate_row(config: SyntheticCorpusConfig, split: str, index: int) -> dict:
    """
    Row `index` of `split`: the shared record shape (`convirt_hf.data.records`) plus ``category``, the scheduled
    primary category (`SYNTHETIC_COLUMNS`). ``labels`` has the primary category first, then a second finding if the
    row has one; retrieval rows never have one.

    A pure function of (config, split, index): the patient's anatomy comes from a generator seeded with
    (seed, split, patient) and everything else from one seeded with (seed, split, index).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    split_code = SPLITS.index(split)
    retrieval = split in RETRIEVAL_SPLITS
    patient = index if retrieval else index // config.studies_per_patient
    patient_rng = np.random.default_rng([config.seed, split_code, 0, patient])
    rng = np.random.default_rng([config.seed, split_code, 1, index])
    primary = primary_category(config, split, index)
    findings = sample_findings(primary, rng, 0.0 if retrieval else config.second_finding_probability,
                               config.category_weights)
    devices = ()
    if rng.random() < config.device_probability:
        devices = (DEVICES[int(rng.integers(len(DEVICES)))],) if rng.random() < 0.7 else DEVICES
    anatomy = Anatomy.sample(patient_rng, rng)
    image = render_radiograph(findings, rng, config.image_size, anatomy=anatomy, devices=devices)
    report = write_report(findings, rng, devices=devices, view=anatomy.view)
    # every sentence stays in the sampling pool: the short ones ("Cardiomegaly.", "No pneumothorax.") carry the most
    text, sentences = prepare_report(report, min_sentence_tokens=1)
    # the primary finding first, then the second one (if any): labels[0] is the row's class, as `category` says
    labels = [finding.name for finding in findings] or ["no finding"]
    record = make_record(
        id=f"synthetic-{config.seed}-{split}-{index:06d}",
        image={"bytes": encode_png(image), "path": None},
        text=text,
        sentences=sentences,
        labels=labels,
        patient_id=f"synthetic-{config.seed}-{split}-patient-{patient:06d}",
        study_id=f"synthetic-{config.seed}-{split}-study-{index:06d}",
        view=anatomy.view,
    )
    record["category"] = primary
    return record


def _generate_rows(config: SyntheticCorpusConfig, split: str, start: int, stop: int) -> list[dict]:
    return [generate_row(config, split, index) for index in range(start, stop)]


def _rows(config: SyntheticCorpusConfig, split: str, count: int, num_workers: int) -> Iterator[dict]:
    """Rows of a split in order; with workers, chunks are drawn in parallel and yielded in order."""
    if count:
        primary_category(config, split, 0)  # builds the schedule before forking, so the workers inherit it
    if num_workers <= 1 or count < 64:
        for index in range(count):
            yield generate_row(config, split, index)
        return
    chunk = 32
    starts = iter(range(0, count, chunk))
    # forked workers start in milliseconds (spawned ones would import torch and transformers again); they only run
    # numpy and PIL. At most two chunks per worker are in flight, so memory stays bounded whatever the corpus size.
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append(pool.submit(_generate_rows, config, split, start, min(start + chunk, count)))

        for _ in range(2 * num_workers):
            submit()
        while pending:
            rows = pending.popleft().result()
            submit()
            yield from rows


def _auto_workers(config: SyntheticCorpusConfig) -> int:
    if not sys.platform.startswith("linux"):  # fork is only safe (and the default) on Linux
        return 1
    total = sum(config.split_sizes().values())
    return 1 if total < 500 else max(1, min(os.cpu_count() or 1, 8))


def generate_synthetic_corpus(
    output_dir: str | os.PathLike,
    config: SyntheticCorpusConfig | None = None,
    *,
    num_workers: int | None = None,
) -> Path:
    """
    Generates the corpus and writes it to `output_dir`.

    Args:
        output_dir: the folder to write; it must not exist or be empty.
        config: what to generate (default: `SyntheticCorpusConfig()`).
        num_workers: processes drawing images; default: one per CPU core for corpora of 500 rows or more. The
            content does not depend on it.

    Returns:
        `Path` of `output_dir`, holding a `datasets.DatasetDict` (``save_to_disk`` layout, loadable with
        `load_synthetic_corpus` or `datasets.load_from_disk`) with the splits of `SPLITS` that have rows, columns
        `SYNTHETIC_COLUMNS` (the shared record columns and ``category``), images as PNG bytes (8-bit grayscale), plus
        ``text_queries.json`` (category -> five sentences) and ``corpus_config.json`` (the config; written last, so
        its presence marks a complete corpus).
    """
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    config = config or SyntheticCorpusConfig()
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty")
    workers = _auto_workers(config) if num_workers is None else max(1, int(num_workers))
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    started = time.perf_counter()
    sizes = {split: count for split, count in config.split_sizes().items() if count > 0}
    # datasets' bars would all read "Generating train split"; one log line per split says more
    bars = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        # a private datasets cache: generation neither reads nor fills the user's HF cache
        with tempfile.TemporaryDirectory(prefix="convirt-synthetic-") as cache_dir:
            splits = {}
            for split, count in sizes.items():
                logger.info("synthetic corpus: drawing %d %s rows (%d px, %d process(es))", count, split,
                            config.image_size, workers)
                splits[split] = Dataset.from_generator(
                    _rows, gen_kwargs={"config": config, "split": split, "count": count, "num_workers": workers},
                    features=SYNTHETIC_FEATURES, cache_dir=cache_dir, writer_batch_size=256,
                )
            DatasetDict(splits).save_to_disk(str(output_dir))
    finally:
        if bars:
            enable_progress_bar()
    (output_dir / "text_queries.json").write_text(json.dumps(TEXT_QUERIES, indent=2) + "\n")
    (output_dir / "corpus_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    logger.info("synthetic corpus (%s) written to %s in %.1f s with %d process(es)",
                ", ".join(f"{split}={count}" for split, count in sizes.items()), output_dir,
                time.perf_counter() - started, workers)
    return output_dir


def load_synthetic_corpus(path: str | os.PathLike):
    """
    Loads a corpus written by `generate_synthetic_corpus`.

    Returns:
        `datasets.DatasetDict` with the corpus's splits (images decode to PIL images in mode "L").
    """
    from datasets import load_from_disk

    return load_from_disk(str(path))


def _is_complete(folder: Path, config: SyntheticCorpusConfig) -> bool:
    try:
        saved = json.loads((folder / "corpus_config.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == json.loads(json.dumps(config.to_dict())) and (folder / "dataset_dict.json").is_file()


def ensure_synthetic_corpus(
    cache_dir: str | os.PathLike,
    config: SyntheticCorpusConfig | None = None,
    *,
    num_workers: int | None = None,
) -> Path:
    """
    The corpus for `config` under `cache_dir`, generated only when it is absent or was saved with another config.

    The folder is named after a hash of the config (and the corpus format version). Generation writes into a
    temporary folder beside it and renames it into place at the end, so an interrupted run never leaves a folder that
    looks like a corpus.

    Args:
        cache_dir: the cache folder (created if needed).
        config: the corpus wanted (default: `SyntheticCorpusConfig()`).
        num_workers: as for `generate_synthetic_corpus`.

    Returns:
        `Path` of the corpus folder.
    """
    config = config or SyntheticCorpusConfig()
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"synthetic-{config.digest()}"
    if _is_complete(final, config):
        logger.info("using the cached synthetic corpus %s", final)
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".incomplete-{final.name}-", dir=cache_dir))
    try:
        generate_synthetic_corpus(staging / "corpus", config, num_workers=num_workers)
        if not _is_complete(final, config):  # else another process finished the same corpus first
            if final.exists():  # a stale or broken folder under this name: move it aside, then swap
                os.replace(final, staging / "stale")
            try:
                os.replace(staging / "corpus", final)
            except OSError:
                if not _is_complete(final, config):  # not a concurrent twin that won the race
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def corpus_fingerprint(dataset_dict) -> str:
    """
    A sha256 over a corpus's content: for every split in order, every row's image bytes and its id, text, sentences,
    labels, patient, study and view, in order.

    Args:
        dataset_dict: a `datasets.DatasetDict` (or a mapping of split name to `datasets.Dataset`).

    Returns:
        `str`: the hex digest.
    """
    digest = hashlib.sha256()
    for split in dataset_dict:
        digest.update(f"split:{split}\n".encode())
        table = dataset_dict[split].with_format("arrow")
        for batch in table.iter(batch_size=256):
            images = batch.column("image").to_pylist()
            others = {name: batch.column(name).to_pylist() for name in batch.column_names if name != "image"}
            for row, image in enumerate(images):
                data = image["bytes"] if image and image.get("bytes") else (image or {}).get("path", "").encode()
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
                fields_ = {name: values[row] for name, values in sorted(others.items())}
                digest.update(json.dumps(fields_, sort_keys=True).encode())
    return digest.hexdigest()


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


def _parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, value = item.rpartition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"expected CATEGORY=WEIGHT, got {item!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"weight of {name.strip()!r} is not a number: {value!r}") from error
    return weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the convirt-hf synthetic chest radiograph corpus.")
    parser.add_argument("--output", help="folder to write the corpus into (must not exist or be empty)")
    parser.add_argument("--grid", help="also write a sample grid PNG (one image per category) here")
    parser.add_argument("--grid-size", type=int, default=256, help="tile size of the sample grid")
    parser.add_argument("--num-workers", type=int, default=None, help="processes (default: one per core)")
    defaults = SyntheticCorpusConfig()
    for name, value in asdict(defaults).items():
        if name == "category_weights":
            parser.add_argument("--category-weights", type=_parse_weights, default={},
                                help='relative weights, e.g. "no finding=3,cardiomegaly=2" (others: 1)')
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.grid and not args.output:
        parser.error("nothing to do: pass --output and/or --grid")
    if args.output and Path(args.output).exists() and any(Path(args.output).iterdir()):
        parser.error(f"--output {args.output} exists and is not empty; choose a new folder")
    try:
        config = SyntheticCorpusConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    except ValueError as error:
        parser.error(str(error))
    if args.grid:
        print(f"wrote {save_sample_grid(args.grid, seed=args.seed, size=args.grid_size)}")
    if args.output:
        started = time.perf_counter()
        generate_synthetic_corpus(args.output, config, num_workers=args.num_workers)
        sizes = ", ".join(f"{split}={count}" for split, count in config.split_sizes().items())
        print(f"wrote {args.output} ({sizes}) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
