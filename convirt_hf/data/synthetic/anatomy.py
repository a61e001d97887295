"""Anatomy of the synthetic chest: a patient and a study drawn at random, and the geometry a film is drawn from.

:class:`Anatomy` holds a patient's body (habitus, lung shape, heart size, ribs) and one study's acquisition (view,
positioning, exposure); the geometry derived from it (and from findings that move things: volume loss, a large
heart) gives the masks of the pleural spaces, mediastinum and heart, and where each rib runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .drawing import _smoothstep, _soft
from .vocabulary import CARDIOTHORACIC_RATIOS, SIDES, Finding


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


@dataclass
class _Scene:
    """What every drawing step of one film needs: the patient, its geometry, the pixel grid and the generator."""

    anatomy: Anatomy
    geometry: _Geometry
    rng: np.random.Generator
    size: int
    edge: float  # the width of a soft mask's edge: 1.5 pixels
    yy: np.ndarray  # a column of pixel-centre y: functions of one coordinate stay 1-D until combined
    xx: np.ndarray  # a row of pixel-centre x

    @classmethod
    def create(cls, anatomy: Anatomy, findings: Sequence[Finding], rng: np.random.Generator, size: int) -> _Scene:
        geometry = _geometry(anatomy, findings, rng)
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size
        return cls(anatomy, geometry, rng, size, 1.5 / size, coords[:, None], coords[None, :])


__all__ = ["Anatomy"]
