"""Radiology report text: sections, sentences, token counts and the paper's sentence sampling.

The paper keeps the FINDINGS and IMPRESSION sections, drops pairs whose text has fewer than 3 tokens, and at each use
samples one sentence uniformly (t_u). Real reports make this harder than it sounds: MIMIC-CXR wraps lines at about 80
characters, impressions are numbered lists ("1. ... 2. ..."), headers come in many spellings, and de-identification
leaves placeholders ("___" in MIMIC-CXR, "XXXX" in Open-i, "[**Name**]" in older MIMIC text). The rules here:

- A header is a known section name followed by a colon (any case, at a line start; in capitals anywhere in a line),
  or alone on its line. Text before the first header is the "preamble".
- ``report_text(mode="findings_impression")``: FINDINGS then IMPRESSION. A report with no header at all is taken to
  be section text already (CheXpert-Plus columns, user CSVs) and used whole; a report with headers but neither
  section gives "" and is dropped by the caller.
- Placeholders are normalised to ``___`` and never count as tokens.
- Pairs whose text has fewer than 3 tokens are unusable (the paper's filter); every sentence with a real token can
  be sampled.
- Sentences end at ".", "!" or "?" followed by a space, except after known abbreviations; list markers ("1.",
  "2)", "-", "*") at the start of an item also start a sentence. Semicolons stay inside a sentence.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np

SECTION_ALIASES: dict[str, tuple[str, ...]] = {
    "findings": ("findings and impression", "findings/impression", "findings", "finding"),
    "impression": ("impressions", "impression", "conclusions", "conclusion", "summary", "opinion"),
    "indication": ("clinical indication", "indications", "indication", "reason for examination", "reason for exam",
                   "clinical information"),
    "history": ("clinical history", "patient history", "history"),
    "comparison": ("comparisons", "comparison", "prior studies", "prior study"),
    "technique": ("procedure comments", "technique", "procedure"),
    "examination": ("examination", "exam", "study"),
    "recommendation": ("recommendation(s)", "recommendations", "recommendation"),
    "notification": ("notifications", "notification"),
    "wet read": ("wet read",),
    "final report": ("final report",),
    "addendum": ("addendum",),
}
ALIAS_TO_SECTION = {alias: section for section, aliases in SECTION_ALIASES.items() for alias in aliases}
_ALIASES = sorted(ALIAS_TO_SECTION, key=len, reverse=True)
_ALIAS_PATTERN = "|".join(re.escape(alias).replace(r"\ ", r"\s+") for alias in _ALIASES)
# a header at a line start (any case), ending with a colon or the end of the line
_LINE_HEADER = re.compile(rf"(?im)^[ \t]*({_ALIAS_PATTERN})[ \t]*(?::|$)")
# a header inside a line: capital letters and a colon ("... normal. IMPRESSION: No acute ...")
_INLINE_HEADER = re.compile(rf"(?<![A-Za-z])({_ALIAS_PATTERN.upper()})[ \t]*:")

_PLACEHOLDER = re.compile(r"\[\*\*[^\]]*\*\*\]|_{2,}|\bX{2,}\b")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")
_ABBREVIATIONS = {
    "dr", "mr", "mrs", "ms", "e.g", "i.e", "vs", "approx", "a.m", "p.m", "fig", "pt", "st", "ca", "resp", "incl",
    "cf", "al",
}
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))(?:\d{1,2}[.)]|[-*\u2022])\s+(?=\S)")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


def normalise_placeholders(text: str) -> str:
    return _PLACEHOLDER.sub("___", text)


def extract_sections(report: str) -> dict[str, str]:
    """
    Splits a report into sections keyed by canonical lower-case names ("findings", "impression", "indication", ...);
    text before the first header is under "preamble". Repeated sections are joined in order.
    """
    report = report or ""
    matches = []
    for pattern in (_LINE_HEADER, _INLINE_HEADER):
        for match in pattern.finditer(report):
            matches.append((match.start(), match.end(), match.group(1)))
    matches.sort()
    headers = []
    for start, end, name in matches:  # drop overlapping duplicates found by both patterns
        if headers and start < headers[-1][1]:
            continue
        headers.append((start, end, name))
    sections: dict[str, str] = {}

    def add(name: str, text: str) -> None:
        text = text.strip()
        sections[name] = f"{sections[name]} {text}".strip() if name in sections else text

    add("preamble", report[: headers[0][0]] if headers else report)
    for index, (start, end, name) in enumerate(headers):
        stop = headers[index + 1][0] if index + 1 < len(headers) else len(report)
        canonical = ALIAS_TO_SECTION[re.sub(r"\s+", " ", name.strip().lower())]
        add(canonical, report[end:stop])
    if not sections["preamble"]:
        del sections["preamble"]
    return sections


def clean_text(text: str) -> str:
    """Placeholders normalised, whitespace (including line wrapping) collapsed."""
    return re.sub(r"\s+", " ", normalise_placeholders(text or "")).strip()


def report_text(report: str, mode: str = "findings_impression") -> str:
    """The text a pair is trained on; see the module docstring for the rules."""
    if mode not in ("findings_impression", "whole"):
        raise ValueError(f"report mode must be 'findings_impression' or 'whole', got {mode!r}")
    sections = extract_sections(report)
    has_headers = set(sections) != {"preamble"} and bool(sections)
    if mode == "whole" or not has_headers:
        parts = [text for name, text in sections.items() if name != "final report"]
        return " ".join(clean_text(part) for part in parts if clean_text(part))
    parts = [clean_text(sections.get(name, "")) for name in ("findings", "impression")]
    return " ".join(part for part in parts if part)


def count_tokens(sentence: str) -> int:
    """Word tokens, not counting de-identification placeholders."""
    return len(_TOKEN.findall(normalise_placeholders(sentence or "")))


def _is_abbreviation_period(item: str, period: int) -> bool:
    """Whether the period at `period` ends an abbreviation ("Dr.", "e.g.", "No. 5", an initial) rather than a sentence."""
    word = re.search(r"([A-Za-z][A-Za-z.]*)$", item[:period])
    if not word:
        return False
    token = word.group(1).rstrip(".")
    following = item[period + 1 :].lstrip()
    if token.lower() == "no":  # "No. 5" (a number), never the "No" of "No effusion."
        return following[:1].isdigit()
    return token.lower() in _ABBREVIATIONS or (len(token) == 1 and token.isupper())


def split_sentences(text: str) -> list[str]:
    """Splits report text into sentences (see the module docstring); returns stripped, non-empty sentences."""
    text = normalise_placeholders(text or "")
    pieces = []
    for item in _LIST_MARKER.split(text):  # list markers start new items and are dropped
        item = re.sub(r"\s+", " ", item).strip()
        start = 0
        for match in _SENTENCE_END.finditer(item):
            if match.group(0) == "." and match.end() < len(item) and _is_abbreviation_period(item, match.start()):
                continue
            pieces.append(item[start : match.end()])
            start = match.end()
        pieces.append(item[start:])
    sentences = (piece.strip() for piece in pieces)
    return [sentence for sentence in sentences if count_tokens(sentence) > 0]


def usable_sentences(text: str, min_tokens: int = 1) -> list[str]:
    return [sentence for sentence in split_sentences(text) if count_tokens(sentence) >= min_tokens]


def prepare_report(
    report: str, *, mode: str = "findings_impression", min_tokens: int = 3, min_sentence_tokens: int = 1
) -> tuple[str, list[str]]:
    """
    The training text and its sentences, or ``("", [])`` when the report is unusable (no findings/impression,
    empty, or fewer than `min_tokens` tokens: the paper's filter, applied to the pair's text).

    Sentences need only `min_sentence_tokens` tokens: short sentences ("Mild cardiomegaly.", "No pneumothorax.")
    carry much of a report's content. If no sentence qualifies, the whole text is the only sentence.
    """
    text = report_text(report, mode)
    if count_tokens(text) < min_tokens:
        return "", []
    return text, usable_sentences(text, min_sentence_tokens) or [text]


def sample_sentence(sentences: Sequence[str], rng: random.Random | np.random.Generator) -> str:
    """One sentence chosen uniformly with `rng` (a `random.Random` or a numpy `Generator`)."""
    if not sentences:
        raise ValueError("cannot sample from an empty list of sentences")
    if isinstance(rng, np.random.Generator):
        return sentences[int(rng.integers(len(sentences)))]
    return sentences[rng.randrange(len(sentences))]


def decode_report(data: bytes) -> tuple[str, bool]:
    """Decodes report bytes as UTF-8 (BOM allowed); falls back to cp1252 and says so (text, repaired)."""
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), True
