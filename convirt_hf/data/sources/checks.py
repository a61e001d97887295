"""One candidate row in, one record (or one counted skip) out: the checks every source's rows go through.

1. rows the caller filtered out on purpose (``views=``) are counted as *filtered*, not as errors;
2. text is made valid UTF-8 in every column (``report_cp1252``, ``metadata_cp1252``, ``image_path_cp1252`` repairs),
   so nothing reaches the Arrow writer that it would refuse; the report is reduced to FINDINGS + IMPRESSION and
   empty, too short or section-less reports are skipped (``empty_report``, ``short_report``,
   ``no_findings_impression``);
3. the image reference is checked and, with ``check_images``, the image fully decoded; repaired images are kept as
   their repaired 8-bit PNG, so training decodes exactly the pixels that were checked.

A row's repairs reach the ledger only once the row is kept (:class:`~convirt_hf.data.skips.RowRepairs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from ..images import ImageProblem, encode_png, load_image
from ..records import make_record, report_key
from ..reports import count_tokens, extract_sections, prepare_report, report_text
from ..skips import RowRepairs
from .base import Candidate, PairLedger, PairOptions, ReportProblem
from .text import fix_text, repair_text

_IMAGE_TYPES = (str, bytes, bytearray, memoryview, dict, PILImage.Image, np.ndarray)


def report_problem(report: str, mode: str, min_tokens: int) -> str:
    """Why `prepare_report` found a report unusable: empty, no FINDINGS/IMPRESSION, or too short."""
    if not report or not report.strip():
        return "empty_report"
    text = report_text(report, mode)
    if not text.strip():
        sections = set(extract_sections(report)) - {"preamble"}
        return "no_findings_impression" if sections else "empty_report"
    if count_tokens(text) < min_tokens:
        return "short_report"
    return "short_report"


def _repair_metadata(candidate: Candidate, repairs: RowRepairs) -> None:
    """Makes the candidate's id, metadata and labels valid UTF-8 (Arrow refuses the surrogates of undecodable bytes)."""
    fields = []
    for name in ("id", "patient_id", "study_id", "view"):
        value = getattr(candidate, name)
        if isinstance(value, str):
            fixed, repaired = repair_text(value)
            if repaired:
                setattr(candidate, name, fixed)
                fields.append(name)
    labels = []
    for label in candidate.labels:
        fixed, repaired = repair_text(label) if isinstance(label, str) else (label, False)
        labels.append(fixed)
        if repaired and "labels" not in fields:
            fields.append("labels")
    candidate.labels = labels
    if candidate.problem:
        candidate.problem = (candidate.problem[0], repair_text(str(candidate.problem[1]))[0])
    if fields:
        repairs.add("metadata_cp1252", f"{', '.join(fields)} not UTF-8; decoded as cp1252")


def _storable_path(path: str, repairs: RowRepairs) -> tuple[Any, tuple[str, str] | None]:
    """
    An image path that Arrow can store. A path carrying undecodable bytes is re-decoded (the manifest was written in
    cp1252 but the file is named in UTF-8); when only the raw bytes name an existing file, its content is kept
    instead, since Arrow stores text. Returns ``(image, problem)``.
    """
    fixed, repaired = repair_text(path)
    if not repaired:
        return path, None
    if os.path.lexists(fixed) or not os.path.lexists(path):
        repairs.add("image_path_cp1252", f"{fixed}: the path was not UTF-8; decoded as cp1252")
        return fixed, None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return None, ("missing_file", f"{fixed} ({error})")
    repairs.add("image_path_embedded", f"{fixed}: the file name is not UTF-8; its bytes are stored instead")
    return {"bytes": data, "path": None}, None


def _prepared_report(candidate: Candidate, options: PairOptions, ledger: PairLedger, repairs: RowRepairs,
                     key: str) -> tuple[str, list[str]] | None:
    """The candidate's ``(text, sentences)``, or None once the row is counted as skipped (`key`: its report's)."""
    report = candidate.report
    if callable(report):
        try:
            report = report()
        except ReportProblem as problem:
            ledger.skip(candidate.id, problem.reason, problem.detail, report=key)
            return None
    report, repaired = fix_text(report)
    if repaired:
        repairs.add("report_cp1252", "report bytes were not UTF-8; decoded as cp1252")
    text = ""
    sentences: list[str] = []
    if report is not None and report.strip():
        text, sentences = prepare_report(report, mode=options.report_mode, min_tokens=options.min_tokens)
    if not text and options.require_text:
        reason = "missing_report" if report is None else report_problem(report, options.report_mode, options.min_tokens)
        ledger.skip(candidate.id, reason, report=key)
        return None
    return text, sentences


def _reference_problem(image: Any) -> tuple[str, str] | None:
    """Why an image cell cannot be an image at all (nothing there, or a value of another type)."""
    if image is None:
        return "missing_file", "no image reference"
    if not isinstance(image, _IMAGE_TYPES):
        return "unsupported_image", f"the image cell holds a {type(image).__name__}: {image!r:.80}"
    if isinstance(image, dict) and image.get("bytes") is None and not image.get("path"):
        return "missing_file", "image dict has neither bytes nor a path"
    return None


def _checked_image(image: Any, row_id: str, options: PairOptions, ledger: PairLedger, repairs: RowRepairs) -> Any:
    """The image as the record stores it (repaired pixels as PNG bytes), or None once the row is counted as skipped."""
    if isinstance(image, dict) and image.get("bytes") is None and isinstance(image.get("path"), str):
        image = image["path"]  # a path either way: checked (and repaired) as one
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    problem = _reference_problem(image)
    if problem is None and isinstance(image, str):
        image, problem = _storable_path(image, repairs)
    if problem:
        ledger.skip(row_id, *problem)
        return None
    if options.check_images:
        before = len(repairs)
        try:
            decoded = load_image(image, max_pixels=options.max_pixels, row_id=row_id, ledger=repairs)
        except ImageProblem as error:
            ledger.skip(row_id, error.reason, error.detail)
            return None
        # Keep the repaired pixels: decoding the original later would need the same repair (or get it wrong).
        return {"bytes": encode_png(decoded), "path": None} if len(repairs) > before else image
    if isinstance(image, str) and "://" not in image and not os.path.isfile(image):
        ledger.skip(row_id, "missing_file", image)  # cheap to check, expensive to discover mid-training
        return None
    return image


def finish_candidate(candidate: Candidate, options: PairOptions, ledger: PairLedger) -> dict | None:
    """
    Checks one candidate: returns its record, or ``None`` after counting it in `ledger` as filtered or skipped (in
    strict mode a skip raises :class:`~convirt_hf.data.skips.BadInputError`).
    """
    repairs = RowRepairs(candidate.repairs)
    _repair_metadata(candidate, repairs)  # first: the id is what every log line names
    row_id = candidate.id
    if options.views is not None and (candidate.view or "").upper() not in options.views:
        ledger.filter("view")
        return None
    # counted once it passes the filters asked for: "read" is what the checks below decide about
    key = report_key(candidate.study_id, row_id)
    ledger.read(key if options.require_text else None, images=candidate.images)
    if candidate.problem:
        ledger.skip(row_id, *candidate.problem, report=key, images=candidate.images)
        return None
    report = _prepared_report(candidate, options, ledger, repairs, key)
    if report is None:
        return None
    image = _checked_image(candidate.image, row_id, options, ledger, repairs)
    if image is None:
        return None
    repairs.commit(ledger, row_id)
    text, sentences = report
    return make_record(row_id, image, text, sentences, candidate.labels, candidate.patient_id, candidate.study_id,
                       candidate.view)


__all__ = ["finish_candidate", "report_problem"]
