"""The findings vocabulary: the eight categories, their words, sides and severities, and random findings.

Everything that names or describes a finding lives here, as data: the categories (:data:`CATEGORIES`), the words
that identify each in text (:data:`CATEGORY_KEYWORDS`), the held-out retrieval queries (:data:`TEXT_QUERIES`), and
the sides and severities a finding may have. :func:`make_finding` and :func:`sample_findings` draw instances of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


__all__ = [
    "CARDIOTHORACIC_RATIOS",
    "CATEGORIES",
    "CATEGORY_KEYWORDS",
    "DEVICES",
    "FINDINGS",
    "ORDINALS",
    "SEVERITIES",
    "SIDES",
    "TEXT_QUERIES",
    "Finding",
    "make_finding",
    "sample_findings",
]
