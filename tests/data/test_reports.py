"""Report sectioning, sentence splitting, filtering and sampling on realistic report styles."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convirt_hf.data.reports import (
    count_tokens,
    decode_report,
    extract_sections,
    prepare_report,
    report_text,
    sample_sentence,
    split_sentences,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reports"
CASES = sorted(path.stem for path in FIXTURES.glob("*.txt"))


def test_there_are_many_report_styles():
    assert len(CASES) >= 12


@pytest.mark.parametrize("name", CASES)
def test_report_fixture(name):
    report = (FIXTURES / f"{name}.txt").read_text()
    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    assert list(extract_sections(report)) == expected["sections"]
    text, sentences = prepare_report(report)
    assert sentences == expected["sentences"]
    if "text" in expected:
        assert text == expected["text"]
    else:
        assert text and all(sentence in text for sentence in sentences)


def test_findings_then_impression_only():
    report = "INDICATION: cough.\nIMPRESSION: No acute process.\nFINDINGS: Lungs are clear.\nCOMPARISON: none."
    assert report_text(report) == "Lungs are clear. No acute process."
    assert "cough" in report_text(report, mode="whole") and "INDICATION" not in report_text(report, mode="whole")


def test_wrapped_lines_are_joined():
    assert split_sentences("There is a small left\n pleural effusion.  The heart\nis normal.") == [
        "There is a small left pleural effusion.",
        "The heart is normal.",
    ]


def test_decimals_abbreviations_and_no():
    sentences = split_sentences("Nodule measures 1.2 x 0.8 cm. No. 5 catheter seen, e.g. in the SVC. No effusion.")
    assert sentences == ["Nodule measures 1.2 x 0.8 cm.", "No. 5 catheter seen, e.g. in the SVC.", "No effusion."]


def test_placeholders_do_not_count_as_tokens():
    assert count_tokens("XXXX XXXX ___ [**Name**]") == 0
    assert count_tokens("The ___ is normal") == 3
    assert prepare_report("XXXX XXXX.") == ("", [])


def test_short_and_empty_reports_are_unusable():
    assert prepare_report("") == ("", [])
    assert prepare_report("   \n\t ") == ("", [])
    assert prepare_report("No effusion.") == ("", [])  # 2 tokens
    assert prepare_report("No pleural effusion.")[1] == ["No pleural effusion."]


def test_sentences_shorter_than_three_tokens_stay_in_the_pool():
    _, sentences = prepare_report("FINDINGS: Cardiomegaly. No effusion. The lungs are otherwise clear.")
    assert sentences == ["Cardiomegaly.", "No effusion.", "The lungs are otherwise clear."]


def test_decode_report():
    assert decode_report("Größe normal".encode()) == ("Größe normal", False)
    assert decode_report("\ufeffLungs clear".encode()) == ("Lungs clear", False)
    text, repaired = decode_report("Heart 5\xb0 rotated".encode("cp1252"))
    assert repaired and text == "Heart 5\xb0 rotated"


def test_sampling_is_uniform_and_reproducible():
    sentences = ["a b c", "d e f", "g h i", "j k l"]
    counts = Counter(sample_sentence(sentences, np.random.default_rng(0)) for _ in range(1))
    rng = np.random.default_rng(123)
    counts = Counter(sample_sentence(sentences, rng) for _ in range(8000))
    expected = 8000 / len(sentences)
    chi_square = sum((counts[s] - expected) ** 2 / expected for s in sentences)
    assert chi_square < 16.3  # 3 degrees of freedom, p = 0.001
    python_rng = random.Random(5)
    assert {sample_sentence(sentences, python_rng) for _ in range(200)} == set(sentences)
    assert sample_sentence(sentences, np.random.default_rng(7)) == sample_sentence(sentences, np.random.default_rng(7))
    with pytest.raises(ValueError, match="empty"):
        sample_sentence([], rng)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_crashes(report):
    sections = extract_sections(report)
    assert all(isinstance(name, str) for name in sections)
    text, sentences = prepare_report(report)
    assert (text == "") == (sentences == [])
    for sentence in split_sentences(report) + sentences:
        assert sentence and sentence == sentence.strip()
    if sentences:
        assert sample_sentence(sentences, random.Random(0)) in sentences


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["FINDINGS:", "IMPRESSION:", "lungs", "clear", ".", "\n", "1.", "XXXX", "No", "effusion"]),
                max_size=40))
def test_report_like_token_soup_never_crashes(parts):
    report = " ".join(parts)
    text, sentences = prepare_report(report)
    assert all(count_tokens(s) >= 1 for s in sentences)
    assert count_tokens(text) >= 3 or text == ""
