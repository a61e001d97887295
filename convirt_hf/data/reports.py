"""Radiology report text: sections, sentences, token counts and the paper's sentence sampling.

ConVIRT (Zhang et al., Appendix A) keeps the FINDINGS and IMPRESSION sections of a report, drops pairs whose text is
empty or has fewer than 3 tokens, and at every use samples one sentence of the kept text uniformly (the text view
t_u). Real reports make each step harder than it sounds:

- **Headers** come in many spellings: ``FINDINGS:``, ``Findings``, ``findings:`` after a sentence, ``FINDINGS AND
  IMPRESSION:``, ``CONCLUSION``/``SUMMARY`` for the impression, MIMIC-CXR's ``FINAL REPORT`` line and ``WET READ``
  block. A header is recognised when it is a known section name (see :data:`SECTION_ALIASES`) and

  * starts a line (any case) and is followed by a colon, or stands alone on its line (capitalised, with or without
    a colon; an all lower-case word alone on a line is more likely the tail of a wrapped sentence), or
  * follows a sentence end on the same line (any case) and is followed by a colon, or
  * is written in capitals and followed by a colon anywhere (``... normal. IMPRESSION: No acute ...``), or
  * directly follows another header's colon (``IMPRESSION: Exam: Chest 2 views.``), or
  * is a metadata label (:data:`METADATA_SECTIONS`: exam, date, comparison, history, indication, technique and
    their variants such as ``Reason for exam``, ``Clinical history``, ``Exam date``) starting with a capital and
    followed by a colon anywhere (``... 2 views Date: XXXX``).

  A section name used inside a sentence ("consistent with prior findings: ...", "compared with the prior study:")
  is not a header.
- **Nested reports and metadata**: Open-i sometimes writes a second, complete report into one section
  (``IMPRESSION: Exam: Chest 2 views. Date: XXXX. History: cough. FINDINGS: ... IMPRESSION: ...``). Metadata
  sections are never training text; one written inside a FINDINGS or IMPRESSION line opens a nested report's header
  block when a FINDINGS or IMPRESSION header follows on that line (it then runs to the next header), and is otherwise
  a lone field covering its first sentence, after which the enclosing section goes on. A paragraph that a section
  already had is not repeated (a nested report repeats the findings written before it).
- **Text selection** (:func:`report_text`): FINDINGS then IMPRESSION. A report with no section header at all is
  taken to be section text already (CheXpert-Plus columns, user CSVs) and used whole. ``FINAL REPORT`` only marks
  where MIMIC-CXR's final text starts, so a report whose only header is that line counts as unsectioned. A report
  with section headers but neither FINDINGS nor IMPRESSION gives ``""``, and the caller drops the pair.
- **De-identification placeholders** (``___`` in MIMIC-CXR, ``XXXX`` in Open-i, ``[**Name**]`` in older MIMIC
  text) are normalised to ``___`` and never count as tokens. Any run of three or more X (all upper or all lower
  case) is a placeholder, also glued to what the de-identification kept (``4XXXX`` -> ``4___``, ``XXXXPM`` ->
  ``___PM``, ``XXXX-XXXX`` -> ``___-___``); no word has three X in a row, so ``XXL``, ``XR``, ``x-ray``,
  ``xiphoid`` and ``2 x 3 cm`` stay as written; a sentence made only of placeholders ("XXXX XXXX.") is
  not a sentence. Lines that only draw a rule (``_____``, ``-----``) are layout, not placeholders, and are removed.
- **Sentences** (:func:`split_sentences`) end at ".", "!" or "?" followed by a space or the end of the text, except
  after abbreviations ("Dr.", "e.g.", "i.e.", "vs.", "approx."; "a.m."/"p.m."/"etc." end a sentence only when a
  capitalised word follows; "No." is an abbreviation only before a number, as in "No. 5"). Decimals ("3.5 cm")
  never end a sentence. Blank lines end a paragraph and so a sentence; a single line break does not (MIMIC-CXR wraps
  lines at about 80 characters mid-sentence). List markers start a new item and are dropped: "1." / "2)" / "-" /
  "*" / bullets at a line start or after a sentence end; mid-line, "2." before a capital and "-" / "*" before a
  capitalised word (lists run onto one line without periods, as in the one-line text below). Semicolons and colons
  stay inside a sentence; a trailing fragment without a period is a sentence.
- **One-line text**: :func:`report_text` joins the kept sections into one line; a section or paragraph that stops
  without a full stop gets one, so the one-line text splits into the same sentences as the sections.
- **Tokens** (:func:`count_tokens`) are runs of letters and digits; "1.2", "x-ray" and "e.g" are one token each.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CONTENT_SECTIONS",
    "METADATA_SECTIONS",
    "SECTION_ALIASES",
    "clean_text",
    "count_tokens",
    "extract_sections",
    "normalise_placeholders",
    "prepare_report",
    "report_text",
    "sample_sentence",
    "split_sentences",
    "usable_sentences",
]

REPORT_MODES = ("findings_impression", "whole")
PLACEHOLDER = "___"

# Canonical section name -> header spellings, as lower-case regular-expression fragments (" " stands for a run of
# spaces/tabs, " ?" for an optional one). Longer spellings are tried first, so "findings and impression" wins over
# "findings" at the same place. Only ASCII classes are used: the fragments are also upper-cased for the
# capitals-anywhere rule.
SECTION_ALIASES: dict[str, tuple[str, ...]] = {
    "findings": (
        "findings and impressions?",
        "findings ?/ ?impressions?",
        "findings ?& ?impressions?",
        "findings",
        "finding",
    ),
    "impression": ("impressions?", "impression\\(s\\)", "conclusions?", "summary", "opinion"),
    "indication": (
        "clinical indications?",
        "indications?",
        "reason for (?:examination|exam|study|request)",
        "clinical information",
        "clinical details",
        "clinical data",
        "reason",
    ),
    "history": ("clinical history", "patient history", "medical history", "history"),
    "comparison": ("comparison (?:study|studies|exams?)", "comparisons?", "prior studies", "prior study"),
    "technique": ("techniques?", "procedure comments?", "procedure"),
    "examination": ("type of (?:examination|exam|study)", "exam(?:ination)? type", "examinations?", "exam", "study"),
    "date": ("date ?/ ?time", "date of (?:examination|exam|study|service)", "(?:exam|examination|study) date", "date"),
    "recommendation": ("recommendations?", "recommendation\\(s\\)"),
    "notification": ("notifications?", "communication"),
    # MIMIC-CXR's preliminary reads, superseded by the final report.
    "wet read": ("wet read(?: version #?[0-9]+)?", "provisional findings impression(?: \\(pfi\\))?"),
    "final report": ("final report",),
    "addendum": ("addendum",),
}
# Headers that mark where a document part starts rather than what a section contains: a report whose only header is
# one of these is still unsectioned text.
DOCUMENT_MARKERS = frozenset({"final report"})
# The sections a pair is trained on (findings_impression mode).
CONTENT_SECTIONS = ("findings", "impression")
# Sections that say how and why the examination was made, not what it showed: never training text in
# findings_impression mode, wherever their header stands (a nested report's "Exam: ... Date: ..." block included).
METADATA_SECTIONS = frozenset({"indication", "history", "comparison", "technique", "examination", "date"})


def _alias_regex(alias: str) -> str:
    """" ?" is optional whitespace and " " required whitespace (spaces or tabs: a header never spans lines)."""
    return alias.replace(" ?", "\x00").replace(" ", "[ \t]+").replace("\x00", "[ \t]*")


# Every spelling is its own named group ("a0", "a1", ...), so a match says which section it names.
_ALIAS_SECTION: dict[str, str] = {}
_ALIAS_FRAGMENTS: list[tuple[str, str]] = []
for _section, _aliases in SECTION_ALIASES.items():
    for _alias in _aliases:
        _ALIAS_FRAGMENTS.append((_alias, _section))
_ALIAS_FRAGMENTS.sort(key=lambda item: len(item[0]), reverse=True)
for _index, (_alias, _section) in enumerate(_ALIAS_FRAGMENTS):
    _ALIAS_SECTION[f"a{_index}"] = _section


def _alias_pattern(upper: bool = False, sections: frozenset | None = None) -> str:
    groups = []
    for index, (alias, section) in enumerate(_ALIAS_FRAGMENTS):
        if sections is not None and section not in sections:
            continue
        fragment = _alias_regex(alias)
        if upper:
            fragment = fragment.upper().replace("\\T", "\\t")
        groups.append(f"(?P<a{index}>{fragment})")
    return "(?:" + "|".join(groups) + ")"


_ALIASES = _alias_pattern()
_ALIASES_UPPER = _alias_pattern(upper=True)
_METADATA_ALIASES = _alias_pattern(sections=METADATA_SECTIONS)
# re.ASCII keeps IGNORECASE from folding e.g. the long s or the Kelvin sign onto ASCII letters.
_CASELESS = re.IGNORECASE | re.ASCII | re.MULTILINE
_HEADER_PATTERNS = (
    # at a line start, followed by a colon
    re.compile(rf"^[ \t]*{_ALIASES}[ \t]*:", _CASELESS),
    # alone on its line, colon optional
    re.compile(rf"^[ \t]*{_ALIASES}[ \t]*:?[ \t]*$", _CASELESS),
    # after a sentence end on the same line, followed by a colon
    re.compile(rf"[.!?;][\"')\]]*[ \t]+{_ALIASES}[ \t]*:", _CASELESS),
    # in capitals anywhere, followed by a colon
    re.compile(rf"(?<![A-Za-z0-9]){_ALIASES_UPPER}[ \t]*:", re.MULTILINE),
    # right after a header's colon, any case: "IMPRESSION: Exam: Chest 2 views." opens a nested report's header block
    re.compile(rf":[ \t]*{_ALIASES}[ \t]*:", _CASELESS),
    # a metadata label starting with a capital, anywhere, followed by a colon ("... 2 views Date: XXXX"); written in
    # lower case mid-sentence ("compared with the prior study: ...") it is prose (checked in _find_headers)
    re.compile(rf"(?<![A-Za-z0-9]){_METADATA_ALIASES}[ \t]*:", _CASELESS),
)
_CAPITALISED_RULE = len(_HEADER_PATTERNS) - 1

# Line separators other than "\n" (str.splitlines treats these as line breaks too).
_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# A line that only draws a rule (MIMIC-CXR puts a row of underscores between the wet read and the final report).
_RULE_LINE = re.compile(r"^[ \t]*[_\-=*~#]{5,}[ \t]*$", re.MULTILINE)
# Open-i's de-identification replaced words, or parts of words, by XXXX, leaving it glued to what was kept ("4XXXX",
# "XXXXPM", "XXXX-XXXX"): any run of three or more X is a placeholder, since no word has three in a row ("XXL",
# "xiphoid", "x-ray" and "2 x 3 cm" have fewer). A run is all upper or all lower case.
_PLACEHOLDER = re.compile(r"\[\*\*[^\n]*?\*\*\]|_{3,}|X{3,}|x{3,}")
_TOKEN = re.compile(r"[^\W_]+(?:[.'\u2019\-][^\W_]+)*")
_WHITESPACE = re.compile(r"\s+")

# Abbreviations whose period never ends a sentence (titles precede a name; the others are mid-sentence Latin).
_NEVER_FINAL = frozenset({"dr", "drs", "mr", "mrs", "ms", "prof", "st", "e.g", "i.e", "vs", "cf", "viz", "approx",
                          "fig", "figs", "incl"})
# Abbreviations that end a sentence only when a capitalised word follows ("at 3 p.m. The findings ...").
_FINAL_IF_CAPITAL = frozenset({"a.m", "p.m", "etc", "pt", "pts"})
_CLOSERS = "\"')]\u201d\u2019"
_SENTENCE_END = re.compile(rf"[.!?]+[{re.escape(_CLOSERS)}]*(?=\s|$)")
# "effusion.No pneumothorax": a missing space after a sentence end (only after a real word, so "e.g.The" is left)
_RUN_ON = re.compile(r"(?<=[a-z]{2}[.!?])(?=[A-Z][a-z])")
_LIST_MARKER = re.compile(r"(?:^|(?<=\s))(?P<marker>\(?[0-9]{1,2}[.)]|[-*\u2022\u2023\u25aa\u25e6\u00b7])[ \t]+(?=\S)",
                          re.MULTILINE)
_UNAMBIGUOUS_BULLETS = frozenset("\u2022\u2023\u25aa\u25e6")
_ONLY_MARKER = re.compile(r"\(?[0-9]{1,2}[.)]")


def normalise_placeholders(text: str) -> str:
    """Replaces de-identification placeholders (``XXXX``, ``___``, ``[**...**]``) with ``___``."""
    return _PLACEHOLDER.sub(PLACEHOLDER, text or "")


def _normalise_layout(text: str) -> str:
    """One kind of line break, no rule lines."""
    text = _LINE_BREAKS.sub("\n", text or "")
    return _RULE_LINE.sub("", text)


def _tidy(text: str) -> str:
    """Strips every line, squeezes spaces and blank lines, keeps the line structure (it marks list items)."""
    lines = [re.sub(r"[^\S\n]+", " ", line).strip() for line in text.split("\n")]
    tidy = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", tidy).strip()


def clean_text(text: str) -> str:
    """
    The one-line form of report text: placeholders normalised to ``___``, rule lines removed, all whitespace
    (including MIMIC-CXR's line wrapping) collapsed to single spaces.
    """
    return _WHITESPACE.sub(" ", normalise_placeholders(_normalise_layout(text))).strip()


def _find_headers(report: str) -> list[tuple[int, int, str]]:
    """(start, end, canonical section) of every header, in order, without overlaps."""
    found = []
    for index, pattern in enumerate(_HEADER_PATTERNS):
        for match in pattern.finditer(report):
            group = match.lastgroup
            if index == 1 and match.group(group).islower():
                continue  # a lower-case word alone on a line is the end of a wrapped sentence, not a header
            if index == _CAPITALISED_RULE and not match.group(group)[0].isupper():
                continue
            found.append((match.start(group), match.end(), _ALIAS_SECTION[group]))
    found.sort(key=lambda item: (item[0], -item[1]))
    headers: list[tuple[int, int, str]] = []
    for start, end, section in found:
        if headers and start < headers[-1][1]:
            continue  # the same header found by two rules, or an alias inside a longer one
        headers.append((start, end, section))
    return headers


def _next_content_starts(headers: list[tuple[int, int, str]]) -> list[int | None]:
    """For each header, where the next FINDINGS or IMPRESSION header after it starts (None: there is none)."""
    starts: list[int | None] = [None] * len(headers)
    following = None
    for index in range(len(headers) - 1, -1, -1):
        starts[index] = following
        if headers[index][2] in CONTENT_SECTIONS:
            following = headers[index][0]
    return starts


def _field_end(text: str) -> int:
    """Where a metadata field written inside a line ends: after its first sentence, at the latest at the line end."""
    line_end = text.find("\n")
    line_end = len(text) if line_end < 0 else line_end
    line = text[:line_end]
    for match in _SENTENCE_END.finditer(line):
        if match.end() >= len(line.rstrip()) or _ends_sentence(line, match):
            return match.end()
    return line_end


def _section_spans(report: str) -> list[tuple[str, str]]:
    """
    (section, raw text) in document order; the text before the first header is the "preamble".

    A metadata header (:data:`METADATA_SECTIONS`) inside the line of a FINDINGS or IMPRESSION section is either the
    start of a nested report's header block, when a FINDINGS or IMPRESSION header follows on the same line (Open-i
    writes a second report into one section: "IMPRESSION: Exam: ... Date: ... FINDINGS: ..."), and then runs to the
    next header as usual; or a field on its own ("... clear. Date: XXXX. No effusion."), which covers its first
    sentence only, the enclosing section going on after it.
    """
    report = _normalise_layout(report)
    headers = _find_headers(report)
    spans = []
    preamble = report[: headers[0][0]] if headers else report
    if preamble.strip():
        spans.append(("preamble", preamble))
    enclosing = None  # the FINDINGS / IMPRESSION section that a metadata field inside its line interrupts
    next_content = _next_content_starts(headers)
    line_start = 0
    for index, (start, end, section) in enumerate(headers):
        stop = headers[index + 1][0] if index + 1 < len(headers) else len(report)
        text = report[end:stop]
        # searched from the previous header on only: linear however many headers share a long line
        line_start = max(line_start, report.rfind("\n", line_start, start) + 1)
        inline = report[line_start:start].strip() != ""
        if section in CONTENT_SECTIONS:
            enclosing = section
        elif section in METADATA_SECTIONS and inline and enclosing is not None:
            line_end = report.find("\n", start)
            following = next_content[index]
            nested = following is not None and (line_end < 0 or following < line_end)
            if not nested:
                cut = _field_end(text)
                spans += [(section, text[:cut]), (enclosing, text[cut:])]
                continue
        elif not inline:
            enclosing = None  # a section of its own: what follows it is not the findings' any more
        spans.append((section, text))
    return spans


def _paragraph_key(paragraph: str) -> str:
    """What two copies of a paragraph share: its words, whatever the layout, case and punctuation."""
    return " ".join(_TOKEN.findall(clean_text(paragraph).casefold()))


def _section_paragraphs(report: str) -> list[tuple[str, list[str]]]:
    """
    Each span of :func:`_section_spans` with its text tidied and split into paragraphs. A paragraph that its section
    already had is dropped: a nested report repeats the findings (and often the impression) written before it.
    """
    seen: dict[str, set[str]] = {}
    result = []
    for section, text in _section_spans(report):
        kept = []
        for paragraph in _tidy(text).split("\n\n"):
            key = _paragraph_key(paragraph)
            if not paragraph or key in seen.setdefault(section, set()):
                continue
            seen[section].add(key)
            kept.append(paragraph)
        result.append((section, kept))
    return result


def extract_sections(report: str) -> dict[str, str]:
    """
    Splits a radiology report into its sections.

    Args:
        report (`str`): the report as written (line breaks, indentation and placeholders as in the source).

    Returns:
        `dict[str, str]`: canonical lower-case section names (``"findings"``, ``"impression"``, ``"indication"``,
        ``"history"``, ``"comparison"``, ``"technique"``, ``"examination"``, ``"date"``, ``"recommendation"``,
        ``"notification"``, ``"wet read"``, ``"final report"``, ``"addendum"``) to their text, in the order the
        sections first appear; text before the first header is under ``"preamble"``. A header with no text keeps
        its key with ``""``. A section that appears twice is joined in order, without the paragraphs it already had
        (a nested report repeats them). Each text has its lines stripped and
        blank lines squeezed but keeps its line breaks (they mark list items); :func:`clean_text` gives one line.
        ``"FINDINGS AND IMPRESSION"`` is filed under ``"findings"``; ``"CONCLUSION"`` and ``"SUMMARY"`` under
        ``"impression"``.

    Example:

    ```python
    >>> extract_sections("INDICATION: Cough.\\nFINDINGS: Lungs are clear.\\nIMPRESSION: Normal chest.")
    {'indication': 'Cough.', 'findings': 'Lungs are clear.', 'impression': 'Normal chest.'}

    ```
    """
    sections: dict[str, str] = {}
    for section, paragraphs in _section_paragraphs(report):
        text = "\n\n".join(paragraphs)
        if section in sections:
            sections[section] = "\n".join(part for part in (sections[section], text) if part)
        else:
            sections[section] = text
    return sections


_ENDS_UNPUNCTUATED = re.compile(rf"[^\W_][{re.escape(_CLOSERS)}]*$")


def _selected_parts(report: str, mode: str) -> list[str]:
    """
    The paragraphs of the sections a pair is trained on, each tidied (line layout kept, see :func:`_tidy`). A
    paragraph that stops without a full stop ("...carpal alignment is maintained" before the impression) gets one,
    so joining them into one line does not run two sentences together; the last one is left as written.
    """
    if mode not in REPORT_MODES:
        raise ValueError(f"report mode must be one of {REPORT_MODES}, got {mode!r}")
    spans = _section_paragraphs(report)
    content_headers = {section for section, _ in spans} - {"preamble"} - DOCUMENT_MARKERS
    # paragraphs are parts too: a blank line ends a sentence, and the one-line text must say so with a full stop
    if mode == "whole" or not content_headers:
        parts = [paragraph for _, paragraphs in spans for paragraph in paragraphs]
    else:
        # FINDINGS before IMPRESSION whatever order they were written in, as the paper reads them
        parts = [paragraph for wanted in CONTENT_SECTIONS for section, paragraphs in spans if section == wanted
                 for paragraph in paragraphs]
    return [part + "." if index < len(parts) - 1 and _ENDS_UNPUNCTUATED.search(part) else part
            for index, part in enumerate(parts)]


def report_text(report: str, mode: str = "findings_impression") -> str:
    """
    The text an image is paired with.

    Args:
        report (`str`): the report as written.
        mode (`str`, defaults to `"findings_impression"`):
            - `"findings_impression"`: the FINDINGS then the IMPRESSION section (the paper keeps only these). A
              report with no section header at all (or only MIMIC-CXR's ``FINAL REPORT`` line) is taken to be
              section text already and used whole; a report with headers but neither section gives `""`.
            - `"whole"`: every section, in order, without the header words.

            Sections and paragraphs are joined with a space; one that stops without a full stop gets one first.

    Returns:
        `str`: one line of text (see :func:`clean_text`), `""` when nothing is left.
    """
    return clean_text(" ".join(_selected_parts(report, mode)))


def count_tokens(sentence: str) -> int:
    """
    Counts word tokens (runs of letters and digits; "1.2", "x-ray" and "e.g" are one token each).
    De-identification placeholders do not count.
    """
    return len(_TOKEN.findall(_PLACEHOLDER.sub(" ", sentence or "")))


def _ends_sentence(item: str, match: re.Match) -> bool:
    """Whether the terminator `match` in the one-line `item` ends a sentence (see the module docstring)."""
    if match.group(0).rstrip(_CLOSERS) != ".":
        return True  # "!", "?", "..." and friends
    start = max(item.rfind(" ", 0, match.start()) + 1, 0)  # item is on one line with single spaces
    word = item[start : match.start()].lstrip("([{\"'\u201c\u2018").lower()
    if not word:
        return True
    following = item[match.end() :].lstrip()[:1]
    if word in _NEVER_FINAL:
        return False
    if word in _FINAL_IF_CAPITAL:
        return following.isupper()
    if word == "no":  # "No. 5 catheter" is a number; "No." at a sentence start is the word "No"
        return not following.isdigit()
    return True


def _previous_char(text: str, position: int, skip: str) -> str:
    """The last character before `position` that is not in `skip` ("" at the start of `text`)."""
    while position > 0 and text[position - 1] in skip:
        position -= 1
    return text[position - 1] if position > 0 else ""


def _list_items(paragraph: str) -> list[str]:
    """Splits a paragraph at list markers (which are dropped); see the module docstring for where they count."""
    items, start = [], 0
    for match in _LIST_MARKER.finditer(paragraph):
        marker = match.group("marker")
        before = _previous_char(paragraph, match.start(), " \t")
        if before in ("", "\n"):
            accepted = True  # a line start
        elif _previous_char(paragraph, match.start(), " \t" + _CLOSERS) in (".", "!", "?", ":", ";"):
            accepted = True  # after a sentence end or a header colon: "1. Mild cardiomegaly. 2. No effusion."
        elif marker in _UNAMBIGUOUS_BULLETS:
            accepted = True
        else:
            # mid-line "2." before a capital, "-" or "*" before a capitalised word: a list run onto one line
            following = paragraph[match.end() : match.end() + 2]
            if marker[-1] == "." and marker[0].isdigit():
                accepted = following[:1].isupper()
            else:
                accepted = marker in "-*" and following[:1].isupper() and following[1:2].islower()
        if accepted:
            items.append(paragraph[start : match.start()])
            start = match.end()
    items.append(paragraph[start:])
    return items


def split_sentences(text: str) -> list[str]:
    """
    Splits report text into sentences.

    Handles MIMIC-CXR line wrapping, numbered and bulleted lists (markers dropped), abbreviations, decimals and
    measurements, de-identification placeholders (normalised to ``___``), all-caps text and trailing fragments
    without a period; see the module docstring for the rules.

    Args:
        text (`str`): report text, raw (line breaks help find list items) or cleaned.

    Returns:
        `list[str]`: the sentences in order, each stripped, on one line, with at least one real (non-placeholder)
        token. Empty for empty input.

    Example:

    ```python
    >>> split_sentences("1.  Mild cardiomegaly.\\n2.  No effusion; no\\npneumothorax")
    ['Mild cardiomegaly.', 'No effusion; no pneumothorax']

    ```
    """
    text = normalise_placeholders(_normalise_layout(text))
    sentences = []
    for paragraph in re.split(r"\n[ \t]*\n", text):
        for item in _list_items(paragraph):
            item = _RUN_ON.sub(" ", _WHITESPACE.sub(" ", item).strip())
            start = 0
            pieces = []
            for match in _SENTENCE_END.finditer(item):
                if match.end() < len(item) and not _ends_sentence(item, match):
                    continue
                pieces.append(item[start : match.end()])
                start = match.end()
            pieces.append(item[start:])
            for piece in pieces:
                piece = piece.strip().lstrip(",;:").strip()
                if piece and not _ONLY_MARKER.fullmatch(piece) and count_tokens(piece) > 0:
                    sentences.append(piece)
    return sentences


def usable_sentences(text: str, min_tokens: int = 3) -> list[str]:
    """The sentences of `text` (see :func:`split_sentences`) with at least `min_tokens` tokens."""
    return [sentence for sentence in split_sentences(text) if count_tokens(sentence) >= min_tokens]


def prepare_report(
    report: str, *, mode: str = "findings_impression", min_tokens: int = 3, min_sentence_tokens: int = 1
) -> tuple[str, list[str]]:
    """
    The training text of a report and the sentences to sample from, or ``("", [])`` when the report is unusable.

    Args:
        report (`str`): the report as written.
        mode (`str`, defaults to `"findings_impression"`): see :func:`report_text`.
        min_tokens (`int`, defaults to 3): the paper's filter: a report whose text has fewer tokens is unusable.
        min_sentence_tokens (`int`, defaults to 1): the fewest tokens a sampled sentence may have. The paper's
            3-token filter is about a pair's text; short sentences ("Cardiomegaly.", "No pneumothorax.") often carry
            a report's main finding, so by default every sentence with a real token stays in the pool.

    Returns:
        `tuple[str, list[str]]`: `(text, sentences)`. `text` is :func:`report_text`; `sentences` are its sentences
        with at least `min_sentence_tokens` tokens, split section by section so list layout is seen. If none
        qualifies but the whole text does, `sentences` is `[text]`. `("", [])` for an empty report, a report with
        headers but no FINDINGS/IMPRESSION (in `"findings_impression"` mode), or text with fewer than `min_tokens`
        tokens.
    """
    parts = _selected_parts(report or "", mode)
    text = clean_text(" ".join(parts))
    if not text or count_tokens(text) < max(min_tokens, 1):
        return "", []
    sentences = [
        sentence for part in parts for sentence in split_sentences(part)
        if count_tokens(sentence) >= max(min_sentence_tokens, 1)
    ]
    return text, sentences or [text]


def sample_sentence(
    sentences: Sequence[str], rng: random.Random | np.random.Generator | np.random.RandomState
) -> str:
    """
    One sentence chosen uniformly at random (the paper's text view t_u).

    Args:
        sentences (`Sequence[str]`): the pool, e.g. the `sentences` column of a record.
        rng (`random.Random`, `numpy.random.Generator` or `numpy.random.RandomState`): the source of randomness;
            the caller seeds it, so draws are reproducible.

    Raises:
        `ValueError`: if `sentences` is empty.
    """
    if len(sentences) == 0:
        raise ValueError("cannot sample from an empty list of sentences")
    if isinstance(rng, np.random.Generator):
        index = int(rng.integers(len(sentences)))
    elif isinstance(rng, np.random.RandomState):
        index = int(rng.randint(len(sentences)))
    elif isinstance(rng, random.Random):
        index = rng.randrange(len(sentences))
    else:
        raise TypeError(f"rng must be a random.Random or a numpy Generator/RandomState, got {type(rng).__name__}")
    return sentences[index]
