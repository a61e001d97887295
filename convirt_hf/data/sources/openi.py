"""Open-i / Indiana University chest X-ray collection (IU X-ray): XML reports joined to PNG images.

Layout, as released by the NLM (``NLMCXR_reports.tgz`` unpacks to ``ecgen-radiology/``; ``NLMCXR_png.tgz`` holds
the PNG files, usually unpacked into ``NLMCXR_png/``)::

    <root>/ecgen-radiology/1.xml ... 3955.xml
    <root>/NLMCXR_png/CXR1_1_IM-0001-3001.png

Each XML report (``<eCitation>``) has ``<uId id="CXR1"/>``, the sections as
``MedlineCitation/Article/Abstract/AbstractText Label="COMPARISON" | "INDICATION" | "FINDINGS" | "IMPRESSION"``,
MeSH terms as ``<MeSH><major>Cardiomegaly/mild</major><automatic>...</automatic></MeSH>`` and one
``<parentImage id="CXR1_1_IM-0001-3001">`` per image (usually a frontal and a lateral view). The PNG of an image is
``<images>/<parentImage id>.png``.

One record per image: ``id`` = the parentImage id, ``patient_id`` = ``study_id`` = the report's uId (the collection
has one report per patient study and no other patient key); ``view`` is ``None`` (the XML gives no per-image view).
With ``mesh_labels=True`` the MeSH major headings become labels: the heading before the first ``/`` qualifier,
lower-cased (``"Cardiomegaly/mild"`` -> ``"cardiomegaly"``), ``"normal"`` -> ``"no finding"``, ``"No Indexing"``
dropped. A report that lists no image yields no row (counted as a report without images, ``report_without_image``: not
a filter, since nobody asked for it); an XML file that cannot be parsed is skipped as ``unreadable_report`` (a report
whose images are unknown, so 0 images); one whose bytes are not UTF-8 is repaired (its invalid bytes read as cp1252)
and counted.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..records import report_key
from .base import Candidate, PairLedger, PairSource, in_shard
from .registry import register_source
from .text import decode_bytes

logger = logging.getLogger(__name__)

REPORTS_FOLDER = "ecgen-radiology"
IMAGE_FOLDERS = ("NLMCXR_png", "images", "png")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def _numeric_key(path: Path) -> tuple:
    return (0, int(path.stem), path.name) if path.stem.isdigit() else (1, 0, path.name)


def parse_report_xml(data: bytes) -> tuple[ET.Element, bool]:
    """
    Parses an Open-i XML report; returns ``(root, repaired)``.

    The files declare UTF-8. When their bytes are not UTF-8, the invalid bytes are decoded as cp1252 and the valid
    UTF-8 around them kept (:func:`~convirt_hf.data.sources.decode_bytes`; ``repaired`` is True) rather than lost.

    Raises:
        ET.ParseError: the file is not well-formed XML.
    """
    try:
        return ET.fromstring(data), False
    except ET.ParseError:
        text, repaired = decode_bytes(data)
        if not repaired:
            raise
        # The declaration says utf-8, which no longer describes a str: drop it and parse the decoded text.
        return ET.fromstring(_XML_DECLARATION.sub("", text, count=1)), True


def report_sections(root: ET.Element) -> list[tuple[str, str]]:
    """``(LABEL, text)`` of every non-empty AbstractText, in document order."""
    sections = []
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        text = "".join(element.itertext()).strip()
        if label and text:
            sections.append((label, text))
    return sections


def mesh_labels(root: ET.Element) -> list[str]:
    """MeSH major headings as label names (see the module docstring)."""
    names = []
    for element in root.iter("major"):
        term = (element.text or "").strip()
        heading = term.split("/")[0].strip().lower()
        if not heading or heading == "no indexing":
            continue
        heading = "no finding" if heading == "normal" else heading
        if heading not in names:
            names.append(heading)
    return names


@dataclass
class OpenISource(PairSource):
    """
    The pairs of the IU X-ray collection (see the module docstring for the layout).

    Args:
        root: the folder holding ``ecgen-radiology/`` (or the reports folder itself).
        image_root: the folder of the PNG images (defaults to ``<root>/NLMCXR_png``, ``<root>/images`` or `root`).
        mesh_labels: turn MeSH major headings into labels.
    """

    root: Path
    image_root: Path | None = None
    mesh_labels: bool = True
    name: str = "openi"

    def __post_init__(self):
        root = Path(self.root)
        reports = root / REPORTS_FOLDER if (root / REPORTS_FOLDER).is_dir() else root
        self.files = tuple(str(path) for path in sorted(reports.glob("*.xml"), key=_numeric_key))
        if not self.files:
            raise FileNotFoundError(f"{root}: no Open-i XML reports (expected {REPORTS_FOLDER}/*.xml)")
        if self.image_root is not None:
            self.image_root = Path(self.image_root)
        else:
            candidates = [root / name for name in IMAGE_FOLDERS] + [root]
            found = (c for c in candidates if c.is_dir() and any(c.glob("*.png")))
            self.image_root = next(found, root / IMAGE_FOLDERS[0])
        if not self.image_root.is_dir():
            logger.warning("%s: image folder not found; every image will be counted as missing", self.image_root)

    def iter_candidates(self, shard: int, num_shards: int, ledger: PairLedger) -> Iterator[Candidate]:
        for index, file in enumerate(self.files):
            if not in_shard(index, shard, num_shards):
                continue
            path = Path(file)
            try:
                root, repaired = parse_report_xml(path.read_bytes())
            except (ET.ParseError, OSError) as error:
                yield Candidate(id=f"{self.name}-{path.stem}", image=None, images=0,
                                problem=("unreadable_report", f"{path}: {error}"))
                continue
            uid = root.find("uId")
            report_id = (uid.get("id") if uid is not None else None) or f"{self.name}-{path.stem}"
            report = "\n".join(f"{label}: {text}" for label, text in report_sections(root))
            labels = mesh_labels(root) if self.mesh_labels else []
            images = [element.get("id") for element in root.iter("parentImage") if element.get("id")]
            if not images:
                ledger.without_images(report_key(report_id, report_id))
                continue
            repairs = [("report_cp1252", f"{path.name} is not UTF-8; decoded as cp1252")] if repaired else []
            for image_id in images:
                yield Candidate(
                    id=image_id,
                    image=str(self.image_root / f"{image_id}.png"),
                    report=report,
                    labels=list(labels),
                    patient_id=report_id,
                    study_id=report_id,
                    view=None,
                    repairs=list(repairs),
                )


def _is_openi(path: Path, names: frozenset) -> bool:
    return path.is_dir() and REPORTS_FOLDER in names


@register_source("openi", options=("image_root", "mesh_labels"), detect=_is_openi, looks_for=f"{REPORTS_FOLDER}/",
                 no_views="Open-i has no per-image view position, so views= would drop every row")
def build_openi(source, *, split: str | None, columns, report_mode: str, **options) -> OpenISource:
    """The Open-i folder; the collection has no official splits, so `split` is refused rather than ignored."""
    if split is not None:
        raise ValueError("Open-i has no official splits: split= is not supported for kind='openi'; make "
                         "patient-level splits with preprocess's holdout= (--holdout validation=0.1 test=0.1)")
    return OpenISource(Path(source).expanduser(), **options)


__all__ = ["OpenISource", "mesh_labels", "parse_report_xml", "report_sections"]
