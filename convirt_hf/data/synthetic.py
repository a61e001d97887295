"""A built-in synthetic corpus: chest-radiograph-like images with reports that describe them.

It lets the whole ConVIRT pipeline (pretraining, linear probe, retrieval) run offline on a laptop CPU in minutes and
show the paper's effects in miniature. Images are drawn from per-patient random anatomy (body habitus, lung shape,
rib spacing, exposure, noise, positioning, support devices); the eight categories of the paper's retrieval set are
drawn as large-scale, visible findings:

- atelectasis: a dense band at a lung base with volume loss (elevated hemidiaphragm);
- cardiomegaly: a wide heart (cardiothoracic ratio about 0.6 instead of 0.4);
- edema: bilateral perihilar haze with Kerley lines;
- fracture: a rib with a break, a step and a bright callus;
- pleural effusion: fluid filling the lung base with a meniscus;
- pneumonia: a patchy consolidation with air bronchograms in one zone;
- pneumothorax: a black rim without lung markings and a visible pleural line around a collapsed lung;
- no finding.

Sides are the patient's: the patient's right lung is on the left of the image. Reports have FINDINGS and IMPRESSION
sections with several phrasings per finding, normal statements and negations of absent findings; text queries (five
per category) follow the style of the paper's retrieval queries.

Every row is generated from its own generator seeded by (seed, split, index), so the corpus is identical for a seed
whatever the order or process that generates it, and different for another seed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .records import RECORD_FEATURES, make_record
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
CORPUS_FORMAT_VERSION = 3  # bump whenever rendering or report writing changes: it keys the cache

# Words that identify a category in text; each category's queries use some and no other category's.
CATEGORY_KEYWORDS = {
    "atelectasis": ("atelectasis", "atelectatic"),
    "cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "edema": ("edema", "kerley", "congestion"),
    "fracture": ("fracture", "cortical break"),
    "pleural effusion": ("effusion", "costophrenic"),
    "pneumonia": ("pneumonia", "consolidation", "airspace"),
    "pneumothorax": ("pneumothorax", "pneumothoraces"),
    "no finding": ("no acute", "no clinically significant", "normal chest", "no acute abnormality", "lungs are clear"),
}

TEXT_QUERIES = {
    "atelectasis": [
        "Left basilar atelectasis.",
        "There is atelectasis at the right lung base.",
        "Plate-like atelectasis with volume loss.",
        "Subsegmental atelectasis in the left lower lobe.",
        "Linear opacity at the lung base consistent with atelectasis.",
    ],
    "cardiomegaly": [
        "The cardiac silhouette is enlarged.",
        "Cardiomegaly is present.",
        "The heart is enlarged.",
        "Moderate cardiomegaly.",
        "Enlarged heart size.",
    ],
    "edema": [
        "There is pulmonary edema.",
        "Findings are consistent with interstitial edema.",
        "Bilateral perihilar edema.",
        "Mild pulmonary edema with Kerley B lines.",
        "Pulmonary vascular congestion and edema.",
    ],
    "fracture": [
        "There is a rib fracture.",
        "Displaced fracture of the left posterior rib.",
        "Acute right rib fracture.",
        "A fracture of the rib is seen.",
        "Cortical break consistent with a rib fracture.",
    ],
    "pleural effusion": [
        "There is a pleural effusion.",
        "Large left pleural effusion.",
        "Blunting of the costophrenic angle from a pleural effusion.",
        "Moderate right pleural effusion.",
        "Small bilateral pleural effusions.",
    ],
    "pneumonia": [
        "Focal consolidation concerning for pneumonia.",
        "Right lower lobe pneumonia.",
        "Airspace consolidation consistent with pneumonia.",
        "There is pneumonia in the left upper lobe.",
        "Patchy consolidation suggesting pneumonia.",
    ],
    "pneumothorax": [
        "There is a pneumothorax.",
        "Large right pneumothorax.",
        "Left apical pneumothorax.",
        "A pneumothorax with a visible pleural line.",
        "Small left pneumothorax.",
    ],
    "no finding": [
        "No clinically significant radiographic abnormalities.",
        "No acute cardiopulmonary process.",
        "Normal chest radiograph.",
        "The lungs are clear and the heart size is normal.",
        "No acute abnormality.",
    ],
}


@dataclass(frozen=True)
class Finding:
    name: str
    side: str | None = None  # "right" / "left" (the patient's) / "bilateral"; None where laterality does not apply
    severity: str = "moderate"
    detail: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class SyntheticCorpusConfig:
    """Sizes and randomness of the synthetic corpus. Classification splits are balanced over the 8 categories."""

    seed: int = 0
    image_size: int = 128
    num_pretrain: int = 3000
    num_validation: int = 400
    num_cls_train: int = 800
    num_cls_val: int = 200
    num_cls_test: int = 800
    retrieval_candidates_per_category: int = 50
    retrieval_queries_per_category: int = 10
    second_finding_probability: float = 0.3
    device_probability: float = 0.2

    def __post_init__(self):
        for name in ("image_size", "num_pretrain", "num_validation", "retrieval_candidates_per_category",
                     "retrieval_queries_per_category"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("num_cls_train", "num_cls_val", "num_cls_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.second_finding_probability <= 1.0:
            raise ValueError("SyntheticCorpusConfig.second_finding_probability must be in [0, 1]")

    def split_sizes(self) -> dict[str, int]:
        return {
            "pretrain": self.num_pretrain,
            "validation": self.num_validation,
            "cls_train": self.num_cls_train,
            "cls_val": self.num_cls_val,
            "cls_test": self.num_cls_test,
            "retrieval_candidates": self.retrieval_candidates_per_category * len(CATEGORIES),
            "retrieval_queries": self.retrieval_queries_per_category * len(CATEGORIES),
        }

    def digest(self) -> str:
        payload = json.dumps({**asdict(self), "format": CORPUS_FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --- drawing -----------------------------------------------------------------------------------------------------


def _gaussian(yy, xx, cy, cx, sy, sx):
    return np.exp(-(((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2) / 2.0)


def _smooth_noise(rng, size, scale):
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.standard_normal((max(2, size // scale), max(2, size // scale))).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)
    field_ = np.asarray(image)
    return field_ / (np.abs(field_).max() + 1e-6)


def _band(yy, xx, y_of_x, thickness):
    """A soft curve y = y_of_x(x) of the given thickness."""
    return np.clip(1.0 - np.abs(yy - y_of_x(xx)) / thickness, 0.0, 1.0)


class Anatomy:
    """One patient's random chest geometry in unit coordinates (x to the image right, y down)."""

    def __init__(self, rng: np.random.Generator):
        self.thorax_half_width = rng.uniform(0.36, 0.42)
        self.center_x = 0.5 + rng.uniform(-0.02, 0.02)
        self.apex_y = rng.uniform(0.12, 0.17)
        self.diaphragm_y = rng.uniform(0.70, 0.77)
        self.dome_height = rng.uniform(0.04, 0.07)
        self.mediastinum_half_width = rng.uniform(0.055, 0.07)
        self.heart_center_y = self.diaphragm_y - rng.uniform(0.10, 0.13)
        self.heart_half_height = rng.uniform(0.11, 0.14)
        self.ctr = rng.uniform(0.38, 0.46)  # cardiothoracic ratio
        self.rib_spacing = rng.uniform(0.050, 0.060)
        self.rib_curvature = rng.uniform(0.7, 1.1)
        self.exposure = rng.uniform(0.85, 1.15)
        self.contrast = rng.uniform(0.85, 1.2)
        self.noise = rng.uniform(0.015, 0.035)
        self.rotation = rng.uniform(-4.0, 4.0)
        self.raised_diaphragm = {"right": 0.0, "left": 0.0}

    def lung_edges(self, side: str):
        """(medial x, lateral x) of a lung; the patient's right lung is on the image left."""
        sign = -1.0 if side == "right" else 1.0
        medial = self.center_x + sign * self.mediastinum_half_width
        lateral = self.center_x + sign * self.thorax_half_width
        return medial, lateral

    def lung_mask(self, yy, xx, side: str, shrink: float = 1.0) -> np.ndarray:
        medial, lateral = self.lung_edges(side)
        width = abs(lateral - medial)
        low, high = min(medial, lateral), max(medial, lateral)
        center = (low + high) / 2
        u = (xx - center) / (width / 2)  # -1..1 across the lung
        bottom = self.diaphragm_y - self.raised_diaphragm[side] - self.dome_height * (1 - u**2)
        top = self.apex_y + 0.06 * u**2 + (0.04 * (u if side == "right" else -u))
        height = np.maximum(bottom - top, 1e-3)
        t = (yy - top) / height  # 0 at the apex, 1 at the diaphragm
        # narrower at the apex: the allowed |u| grows with depth
        allowed = 0.3 + 0.7 * np.sqrt(np.clip(t, 0, 1))
        inside = (t > 0) & (t < 1) & (np.abs(u) < allowed)
        if shrink < 1.0:  # a collapsed lung shrinks towards the hilum (medial, mid-height)
            hilum_u = 1.0 if side == "right" else -1.0
            su = hilum_u + (u - hilum_u) / shrink
            st = 0.45 + (t - 0.45) / shrink
            inside = inside & (st > 0) & (st < 1) & (np.abs(su) < 0.3 + 0.7 * np.sqrt(np.clip(st, 0, 1)))
        return inside.astype(np.float32)


def _side_x(anatomy: Anatomy, side: str, fraction: float) -> float:
    """x at `fraction` of the way from the medial to the lateral edge of a lung."""
    medial, lateral = anatomy.lung_edges(side)
    return medial + fraction * (lateral - medial)


def render_radiograph(findings: list[Finding], rng: np.random.Generator, size: int = 256,
                      device: bool = False) -> np.ndarray:
    """Draws a frontal chest film (uint8, size x size) showing `findings`."""
    anatomy = Anatomy(rng)
    names = {finding.name for finding in findings}
    for finding in findings:
        if finding.name == "atelectasis":
            anatomy.raised_diaphragm[finding.side] = rng.uniform(0.07, 0.10)
    if "cardiomegaly" in names:
        anatomy.ctr = rng.uniform(0.58, 0.66)
        anatomy.heart_half_height *= 1.15

    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    image = np.zeros((size, size), np.float32)

    # body and soft tissue
    body = ((xx - anatomy.center_x) / (anatomy.thorax_half_width + 0.08)) ** 2 + ((yy - 0.55) / 0.62) ** 4 < 1
    image += 0.42 * body
    abdomen = (yy > anatomy.diaphragm_y - 0.02) & body
    image += 0.10 * abdomen

    # lungs, with vessel-like texture that fades towards the periphery
    texture = 0.5 * _smooth_noise(rng, size, 6) + 0.5 * _smooth_noise(rng, size, 3)
    lungs = {}
    collapsed = {}
    for side in ("right", "left"):
        shrink = 1.0
        for finding in findings:
            if finding.name == "pneumothorax" and finding.side in (side, "bilateral"):
                shrink = finding.detail.get("shrink", 0.7)
        lungs[side] = anatomy.lung_mask(yy, xx, side)
        collapsed[side] = anatomy.lung_mask(yy, xx, side, shrink) if shrink < 1 else lungs[side]
    lung = np.clip(lungs["right"] + lungs["left"], 0, 1)
    aerated = np.clip(collapsed["right"] + collapsed["left"], 0, 1)
    hilum_distance = np.minimum(np.hypot(xx - _side_x(anatomy, "right", 0.15), yy - 0.45),
                                np.hypot(xx - _side_x(anatomy, "left", 0.15), yy - 0.45))
    markings = (0.12 * np.clip(texture, 0, 1) * np.exp(-hilum_distance / 0.22)).astype(np.float32)
    image = image * (1 - lung) + lung * 0.16 + aerated * markings
    # pneumothorax: the space between chest wall and collapsed lung is black, with a thin bright pleural line
    rim = np.clip(lung - aerated, 0, 1)
    if rim.any():
        edge = np.clip(aerated - _erode(aerated, 1), 0, 1)
        image = image * (1 - rim) + rim * 0.0 + 0.16 * edge

    # mediastinum, spine and heart
    mediastinum = np.abs(xx - anatomy.center_x) < anatomy.mediastinum_half_width
    image = np.where(mediastinum & (yy > 0.05), np.maximum(image, 0.55), image)
    heart_half_width = anatomy.ctr * anatomy.thorax_half_width
    heart_center_x = anatomy.center_x + 0.25 * heart_half_width
    heart = ((xx - heart_center_x) / heart_half_width) ** 2 + ((yy - anatomy.heart_center_y) / anatomy.heart_half_height) ** 2
    image = np.where(heart < 1, np.maximum(image, 0.56 + 0.02 * (1 - heart)), image)

    # findings in the lungs
    for finding in findings:
        image = _draw_finding(image, finding, anatomy, lungs, yy, xx, rng, size)

    # bones drawn over everything: ribs (posterior arcs) and clavicles
    thorax = np.abs(xx - anatomy.center_x) < anatomy.thorax_half_width + 0.02
    fracture = next((f for f in findings if f.name == "fracture"), None)
    for side in ("right", "left"):
        medial, lateral = anatomy.lung_edges(side)
        for index in range(10):
            rib = _rib_band(anatomy, side, index, yy, xx)
            if fracture is not None and fracture.side == side and index == fracture.detail["rib"]:
                rib = _break_rib(rib, anatomy, side, index, yy, xx, fracture, image)
            image += 0.10 * rib * thorax
        clavicle_y = anatomy.apex_y + 0.01
        clavicle = _band(yy, xx, lambda x, m=medial, c=clavicle_y: c + 0.25 * (x - m) ** 2 - 0.02, 0.018)
        near = np.abs(xx - (medial + lateral) / 2) < abs(lateral - medial) * 0.65
        image += 0.16 * clavicle * near
    if fracture is not None:
        cy, cx = fracture.detail["site"]
        image += 0.6 * _gaussian(yy, xx, cy, cx, 0.035, 0.035)  # callus: conspicuous even downsampled

    if device:  # a central line / tube: a distractor unrelated to the findings
        start_x = anatomy.center_x + rng.choice([-1, 1]) * rng.uniform(0.15, 0.25)
        line = _band(yy, xx, lambda x: 0.1 + 2.5 * np.abs(x - start_x) ** 1.2, 0.006)
        image += 0.35 * line * (yy < 0.45) * (np.abs(xx - start_x) < abs(start_x - anatomy.center_x) + 0.01)

    # exposure, contrast, noise, positioning
    image = (image - 0.35) * anatomy.contrast + 0.35 * anatomy.exposure
    image += anatomy.noise * rng.standard_normal(image.shape).astype(np.float32)
    image = np.clip(image, 0, 1)
    pil = Image.fromarray((image * 255).astype(np.uint8), mode="L")
    pil = pil.rotate(anatomy.rotation, resample=Image.BILINEAR, fillcolor=0)
    return np.asarray(pil)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    eroded = mask.copy()
    for axis in (0, 1):
        for shift in range(1, radius + 1):
            eroded = np.minimum(eroded, np.roll(mask, shift, axis=axis))
            eroded = np.minimum(eroded, np.roll(mask, -shift, axis=axis))
    return eroded


def _rib_band(anatomy: Anatomy, side: str, index: int, yy, xx) -> np.ndarray:
    medial, lateral = anatomy.lung_edges(side)
    y0 = anatomy.apex_y - 0.01 + index * anatomy.rib_spacing
    span = abs(lateral - medial)

    def curve(x):
        u = (x - medial) / (lateral - medial)  # 0 at the spine, 1 at the chest wall
        return y0 - 0.04 * anatomy.rib_curvature * u + 0.17 * anatomy.rib_curvature * u**2 * span / 0.33

    band = _band(yy, xx, curve, 0.011)
    u = (xx - medial) / (lateral - medial)
    return band * ((u > -0.05) & (u < 1.08))


def _break_rib(rib, anatomy, side, index, yy, xx, fracture: Finding, image) -> np.ndarray:
    """Cuts a gap into a rib and displaces its lateral part (a step)."""
    medial, lateral = anatomy.lung_edges(side)
    fraction = fracture.detail["position"]
    break_x = medial + fraction * (lateral - medial)
    lateral_part = (xx - break_x) * np.sign(lateral - medial) > 0
    gap = np.abs(xx - break_x) < 0.012
    step = fracture.detail["step"]
    shifted = np.roll(rib, int(round(step * rib.shape[0])), axis=0)
    broken = np.where(lateral_part, shifted, rib) * (~gap)
    y_site = float(np.average(yy[rib > 0.5], weights=None)) if (rib > 0.5).any() else 0.4
    near = np.abs(xx - break_x) < 0.02
    if (rib * near > 0.5).any():
        y_site = float(yy[(rib * near) > 0.5].mean())
    fracture.detail["site"] = (y_site, break_x)
    return broken


def _draw_finding(image, finding: Finding, anatomy: Anatomy, lungs, yy, xx, rng, size) -> np.ndarray:
    sides = ("right", "left") if finding.side == "bilateral" else (finding.side,)
    if finding.name == "pleural effusion":
        for side in sides:
            medial, lateral = anatomy.lung_edges(side)
            depth = {"small": 0.22, "moderate": 0.35, "large": 0.5}[finding.severity]
            level = anatomy.diaphragm_y - depth * (anatomy.diaphragm_y - anatomy.apex_y)

            def meniscus(x, m=medial, l=lateral, lv=level):
                u = np.clip((x - m) / (l - m), 0, 1)
                return lv - 0.07 * u**2  # fluid climbs the lateral chest wall

            fluid = (yy > meniscus(xx)) & (np.abs(xx - (medial + lateral) / 2) < abs(lateral - medial) / 2 + 0.02)
            fluid &= yy < anatomy.diaphragm_y + 0.04
            image = np.where(fluid, np.maximum(image, 0.5 + 0.03 * rng.standard_normal(image.shape)), image)
    elif finding.name == "pneumonia":
        side = sides[0]
        zone_y = {"upper": 0.32, "middle": 0.47, "lower": 0.6}[finding.detail["zone"]]
        cx = _side_x(anatomy, side, rng.uniform(0.35, 0.6))
        patch = np.zeros_like(image)
        for _ in range(6):
            patch += _gaussian(yy, xx, zone_y + rng.uniform(-0.05, 0.05), cx + rng.uniform(-0.05, 0.05),
                               rng.uniform(0.045, 0.07), rng.uniform(0.045, 0.07))
        patch = np.clip(patch, 0, 1) * (0.6 + 0.4 * np.clip(_smooth_noise(rng, size, 4), 0, 1))
        bronchogram = _band(yy, xx, lambda x: zone_y + 0.6 * (x - cx), 0.006) * (np.abs(xx - cx) < 0.06)
        image = image + 0.55 * patch * lungs[side] - 0.12 * bronchogram * (patch > 0.4)
    elif finding.name == "atelectasis":
        side = sides[0]
        medial, lateral = anatomy.lung_edges(side)
        base = anatomy.diaphragm_y - anatomy.raised_diaphragm[side] - 0.09
        cx = medial + 0.6 * (lateral - medial)  # lateral to the heart border
        plate = _band(yy, xx, lambda x: base + 0.25 * (x - cx), 0.03) * (np.abs(xx - cx) < abs(lateral - medial) * 0.35)
        # a soft triangular density above the raised hemidiaphragm (collapsed lower lobe)
        wedge = np.clip((yy - base) / 0.08, 0, 1) * np.exp(-np.abs(xx - medial) / 0.06)
        image = image + 0.6 * plate * lungs[side] + 0.3 * wedge * lungs[side]
    elif finding.name == "edema":
        haze = np.zeros_like(image)
        for side in ("right", "left"):
            haze += _gaussian(yy, xx, 0.47, _side_x(anatomy, side, 0.2), 0.12, 0.10)
        kerley = np.zeros_like(image)
        for side in ("right", "left"):
            lateral = anatomy.lung_edges(side)[1]
            for k in range(5):
                y = anatomy.diaphragm_y - 0.06 - 0.025 * k
                kerley += _band(yy, xx, lambda x, y=y: y + 0 * x, 0.004) * (np.abs(xx - lateral) < 0.05)
        lung = np.clip(lungs["right"] + lungs["left"], 0, 1)
        strength = {"mild": 0.22, "moderate": 0.3, "severe": 0.38}[finding.severity]
        image = image + strength * np.clip(haze, 0, 1) * lung + 0.2 * kerley * lung
    return image


# --- reports -----------------------------------------------------------------------------------------------------

SEVERITIES = ("small", "moderate", "large")
ORDINALS = ("fourth", "fifth", "sixth", "seventh", "eighth")
POSITIVE_TEMPLATES = {
    "atelectasis": (
        "{Side} basilar atelectasis.",
        "Linear opacity at the {side} lung base, consistent with atelectasis.",
        "Plate-like atelectasis at the {side} base with elevation of the {side} hemidiaphragm.",
        "Volume loss in the {side} lower lobe, likely subsegmental atelectasis.",
        "There is {side} lower lobe atelectasis.",
    ),
    "cardiomegaly": (
        "The cardiac silhouette is enlarged.",
        "Cardiomegaly.",
        "The heart is {severity_adverb} enlarged.",
        "Enlarged cardiac silhouette.",
        "Heart size is increased, compatible with cardiomegaly.",
    ),
    "edema": (
        "Bilateral perihilar opacities consistent with pulmonary edema.",
        "There is {edema_severity} pulmonary edema.",
        "Interstitial edema with Kerley B lines.",
        "Findings compatible with {edema_severity} interstitial pulmonary edema.",
        "Pulmonary vascular congestion with edema.",
    ),
    "fracture": (
        "There is a fracture of the {side} {ordinal} rib.",
        "{Side} {ordinal} rib fracture.",
        "Displaced fracture of the {side} {ordinal} posterior rib.",
        "Cortical break in the {side} {ordinal} rib, consistent with fracture.",
    ),
    "pleural effusion": (
        "{Severity} {side} pleural effusion.",
        "There is a {severity} {side} pleural effusion.",
        "Blunting of the {side} costophrenic angle due to pleural effusion.",
        "{Side} pleural effusion with a meniscus.",
    ),
    "pneumonia": (
        "Focal consolidation in the {side} {zone} lung concerning for pneumonia.",
        "{Side} {zone} lobe pneumonia.",
        "Patchy airspace opacity in the {side} {zone} lung, consistent with pneumonia.",
        "There is consolidation in the {side} {zone} zone, likely pneumonia.",
    ),
    "pneumothorax": (
        "There is a {severity} {side} pneumothorax.",
        "{Side} pneumothorax with a visible pleural line.",
        "{Severity} {side} pneumothorax.",
        "A {side} pneumothorax is present.",
    ),
}
IMPRESSION_TEMPLATES = {
    "atelectasis": ("{Side} basilar atelectasis.", "Atelectasis at the {side} base."),
    "cardiomegaly": ("Cardiomegaly.", "Enlarged cardiac silhouette."),
    "edema": ("Pulmonary edema.", "{Edema_severity} interstitial edema."),
    "fracture": ("{Side} rib fracture.", "Acute {side} {ordinal} rib fracture."),
    "pleural effusion": ("{Severity} {side} pleural effusion.", "{Side} pleural effusion."),
    "pneumonia": ("{Side} {zone} lobe pneumonia.", "Findings concerning for {side} pneumonia."),
    "pneumothorax": ("{Severity} {side} pneumothorax.", "{Side} pneumothorax."),
}
NORMAL_STATEMENTS = {
    "cardiomegaly": ("Heart size is normal.", "The cardiac silhouette is within normal limits.",
                     "Normal cardiomediastinal silhouette."),
    "pleural effusion": ("No pleural effusion.", "There is no pleural effusion."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "pneumonia": ("No focal consolidation.", "No consolidation to suggest pneumonia."),
    "edema": ("No pulmonary edema.", "No vascular congestion or edema."),
    "fracture": ("No displaced rib fracture.", "No acute fracture."),
    "atelectasis": ("No atelectasis.",),
}
NO_FINDING_IMPRESSIONS = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                          "Normal chest radiograph.")
DEVICE_SENTENCES = ("A right internal jugular central venous catheter is in place.",
                    "A support line projects over the upper chest.")


def sample_findings(primary: str, rng: np.random.Generator, second_probability: float) -> list[Finding]:
    """The findings of one image: `primary` and, with `second_probability`, another finding."""
    if primary == "no finding":
        return []
    names = [primary]
    if rng.random() < second_probability:
        others = [name for name in FINDINGS if name != primary]
        names.append(others[int(rng.integers(len(others)))])
    return [_make_finding(name, rng) for name in names]


def _make_finding(name: str, rng: np.random.Generator) -> Finding:
    side = ("right", "left")[int(rng.integers(2))]
    severity = SEVERITIES[int(rng.integers(3))]
    detail: dict = {}
    if name == "cardiomegaly":
        side = None
    elif name == "edema":
        side, severity = "bilateral", ("mild", "moderate", "severe")[int(rng.integers(3))]
    elif name == "pleural effusion" and rng.random() < 0.2:
        side = "bilateral"
    elif name == "pneumothorax":
        detail["shrink"] = {"small": 0.75, "moderate": 0.65, "large": 0.55}[severity]
    elif name == "pneumonia":
        detail["zone"] = ("upper", "middle", "lower")[int(rng.integers(3))]
    elif name == "fracture":
        detail.update(rib=int(rng.integers(3, 8)), position=float(rng.uniform(0.55, 0.85)),
                      step=float(rng.uniform(0.012, 0.02)))
    return Finding(name, side, severity, detail)


def _fill(template: str, finding: Finding) -> str:
    side = finding.side or ""
    values = {
        "side": side,
        "Side": side.capitalize(),
        "severity": finding.severity,
        "Severity": finding.severity.capitalize(),
        "severity_adverb": {"small": "mildly", "moderate": "moderately", "large": "markedly"}.get(finding.severity, "mildly"),
        "edema_severity": finding.severity,
        "Edema_severity": finding.severity.capitalize(),
        "zone": finding.detail.get("zone", "lower"),
        "ordinal": ORDINALS[min(finding.detail.get("rib", 3) - 3, len(ORDINALS) - 1)] if "rib" in finding.detail else "sixth",
    }
    if finding.side == "bilateral" and finding.name == "pleural effusion":
        template = template.replace("{severity} {side} pleural effusion", "{severity} bilateral pleural effusions")
    return template.format(**values).replace("  ", " ")


def write_report(findings: list[Finding], rng: np.random.Generator, device: bool = False) -> str:
    """A report with FINDINGS and IMPRESSION sections describing `findings` (and negating some absent ones)."""
    present = {finding.name for finding in findings}
    sentences = [_fill(_choice(rng, POSITIVE_TEMPLATES[f.name]), f) for f in findings]
    absent = [name for name in NORMAL_STATEMENTS if name not in present]
    if not present & {"pneumonia", "edema", "atelectasis"} and rng.random() < 0.3:
        sentences.append(_choice(rng, ("The lungs are clear.", "Lungs are well expanded and clear.")))
    for name in rng.permutation(absent)[: int(rng.integers(0, 3))]:
        sentences.append(_choice(rng, NORMAL_STATEMENTS[str(name)]))
    if device:
        sentences.append(_choice(rng, DEVICE_SENTENCES))
    order = rng.permutation(len(sentences))
    findings_text = " ".join(sentences[i] for i in order)
    if findings:
        impression = " ".join(f"{i + 1}. {_fill(_choice(rng, IMPRESSION_TEMPLATES[f.name]), f)}"
                              if len(findings) > 1 else _fill(_choice(rng, IMPRESSION_TEMPLATES[f.name]), f)
                              for i, f in enumerate(findings))
    else:
        impression = _choice(rng, NO_FINDING_IMPRESSIONS)
    return f"FINDINGS: {findings_text}\nIMPRESSION: {impression}"


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# --- corpus ------------------------------------------------------------------------------------------------------


def encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def generate_row(config: SyntheticCorpusConfig, split: str, index: int) -> dict:
    """One record of `split`; a pure function of (config, split, index)."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    if split.startswith("retrieval"):
        primary = CATEGORIES[index % len(CATEGORIES)]
        findings = sample_findings(primary, rng, second_probability=0.0)
    else:
        primary = CATEGORIES[index % len(CATEGORIES)]
        findings = sample_findings(primary, rng, config.second_finding_probability)
    device = bool(rng.random() < config.device_probability)
    image = render_radiograph(findings, rng, size=config.image_size, device=device)
    report = write_report(findings, rng, device=device)
    text, sentences = prepare_report(report)
    labels = sorted({finding.name for finding in findings}) or ["no finding"]
    return make_record(
        id=f"synthetic-{config.seed}-{split}-{index:06d}",
        image={"bytes": encode_png(image), "path": None},
        text=text,
        sentences=sentences,
        labels=labels,
        patient_id=f"synthetic-patient-{config.seed}-{split}-{index // 2:06d}",
        study_id=f"synthetic-study-{config.seed}-{split}-{index:06d}",
        view=("PA", "AP")[int(rng.integers(2))],
    )


def _rows(config: SyntheticCorpusConfig, split: str, count: int):
    for index in range(count):
        yield generate_row(config, split, index)


def generate_synthetic_corpus(output_dir: str | os.PathLike, config: SyntheticCorpusConfig | None = None) -> Path:
    """
    Writes the corpus as a `datasets.DatasetDict` (``save_to_disk``) with the splits in `SPLITS`, plus
    ``text_queries.json`` and ``corpus_config.json``. Rows stream to Arrow files, so memory stays bounded.
    """
    from datasets import Dataset, DatasetDict

    config = config or SyntheticCorpusConfig()
    output_dir = Path(output_dir)
    started = time.perf_counter()
    splits = {}
    with _TemporaryCache() as cache_dir:
        for split, count in config.split_sizes().items():
            if count == 0:
                continue
            splits[split] = Dataset.from_generator(
                _rows, gen_kwargs={"config": config, "split": split, "count": count}, features=RECORD_FEATURES,
                cache_dir=cache_dir, writer_batch_size=256,
            )
        DatasetDict(splits).save_to_disk(str(output_dir))
    (output_dir / "text_queries.json").write_text(json.dumps(TEXT_QUERIES, indent=2))
    (output_dir / "corpus_config.json").write_text(
        json.dumps({**asdict(config), "format": CORPUS_FORMAT_VERSION, "digest": config.digest()}, indent=2)
    )
    logger.info("synthetic corpus (%s) written to %s in %.1f s", ", ".join(f"{k}={v}" for k, v in
                config.split_sizes().items()), output_dir, time.perf_counter() - started)
    return output_dir


class _TemporaryCache:
    """A private datasets cache folder, so generation never touches (or depends on) the user's HF cache."""

    def __enter__(self) -> str:
        import tempfile

        self.path = tempfile.mkdtemp(prefix="convirt-synthetic-")
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def load_synthetic_corpus(path: str | os.PathLike):
    from datasets import load_from_disk

    return load_from_disk(str(path))


def ensure_synthetic_corpus(cache_dir: str | os.PathLike, config: SyntheticCorpusConfig | None = None) -> Path:
    """
    The corpus for `config` under `cache_dir`, generated if absent. The folder name carries a digest of the config;
    generation writes into a temporary folder renamed at the end, so an interrupted run never leaves half a corpus.
    """
    config = config or SyntheticCorpusConfig()
    cache_dir = Path(cache_dir)
    final = cache_dir / f"synthetic-{config.digest()}"
    if (final / "corpus_config.json").is_file():
        logger.info("using the cached synthetic corpus %s", final)
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = cache_dir / f".incomplete-synthetic-{config.digest()}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        generate_synthetic_corpus(temporary, config)
        if final.exists():  # another process finished first
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            os.replace(temporary, final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def corpus_fingerprint(corpus) -> str:
    """sha256 over every split's rows (image bytes, text, sentences, labels, ids), in order."""
    digest = hashlib.sha256()
    for split in sorted(corpus.keys()):
        table = corpus[split].cast_column("image", corpus[split].features["image"].__class__(decode=False))
        for row in table:
            digest.update(split.encode())
            digest.update(row["image"]["bytes"])
            digest.update(json.dumps([row["id"], row["text"], row["sentences"], row["labels"]]).encode())
    return digest.hexdigest()


def save_sample_grid(path: str | os.PathLike, seed: int = 0, size: int = 256) -> Path:
    """A PNG with one synthetic image per category, titled, for people to look at."""
    config = SyntheticCorpusConfig(seed=seed, image_size=size)
    tiles = []
    for index, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, 99, index])
        findings = sample_findings(category, rng, second_probability=0.0)
        tiles.append((category, render_radiograph(findings, rng, size=config.image_size)))
    columns, title = 4, 22
    grid = Image.new("L", (columns * size, (len(tiles) // columns) * (size + title)), color=255)
    draw = ImageDraw.Draw(grid)
    for index, (category, array) in enumerate(tiles):
        x, y = (index % columns) * size, (index // columns) * (size + title)
        draw.text((x + 6, y + 5), category, fill=0)
        grid.paste(Image.fromarray(array, mode="L"), (x, y + title))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the convirt-hf synthetic chest radiograph corpus.")
    parser.add_argument("--output", help="folder to write the corpus into (must not exist)")
    parser.add_argument("--grid", help="also write a sample grid PNG (one image per category) here")
    defaults = SyntheticCorpusConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.grid:
        print(f"wrote {save_sample_grid(args.grid, seed=args.seed)}")
    if args.output:
        if Path(args.output).exists():
            parser.error(f"--output {args.output} exists; choose a new folder")
        config = SyntheticCorpusConfig(**{name: getattr(args, name) for name in asdict(defaults)})
        generate_synthetic_corpus(args.output, config)
        print(f"wrote {args.output}: " + ", ".join(f"{k}={v}" for k, v in config.split_sizes().items()))
    if not args.grid and not args.output:
        parser.error("nothing to do: pass --output and/or --grid")


if __name__ == "__main__":
    main()
