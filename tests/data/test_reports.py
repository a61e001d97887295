"""Report sectioning, sentence splitting, filtering and sampling, on realistic report styles and arbitrary text."""

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
    clean_text,
    count_tokens,
    extract_sections,
    prepare_report,
    report_text,
    sample_sentence,
    split_sentences,
    usable_sentences,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reports"
CASES = sorted(path.stem for path in FIXTURES.glob("*.txt"))


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _fixture(name: str) -> tuple[str, dict]:
    return (FIXTURES / f"{name}.txt").read_text(encoding="utf-8"), json.loads(
        (FIXTURES / f"{name}.json").read_text(encoding="utf-8")
    )


def test_there_are_many_report_styles_each_with_expectations():
    assert len(CASES) >= 12
    assert all((FIXTURES / f"{name}.json").exists() for name in CASES)


@pytest.mark.parametrize("name", CASES)
def test_report_fixture(name):
    report, expected = _fixture(name)
    sections = extract_sections(report)
    # section order and names exactly; texts compared with whitespace collapsed (line layout is tested below)
    assert list(sections) == list(expected["sections"])
    assert {key: _collapse(value) for key, value in sections.items()} == expected["sections"]
    text, sentences = prepare_report(report)
    assert text == expected["text"]
    assert sentences == expected["sentences"]
    if text:  # (an unusable report may still have a little text: "IMPRESSION: Normal.")
        assert report_text(report) == text
    # the stricter sentence pool, where it differs from the default
    strict_pool = prepare_report(report, min_sentence_tokens=3)[1]
    assert strict_pool == expected.get("sentences_min_3", sentences)
    for sentence in sentences:
        assert sentence in text or _collapse(sentence) in text
        assert count_tokens(sentence) >= 1
    assert all(count_tokens(sentence) >= 3 for sentence in strict_pool) or strict_pool == [text]


def test_sections_keep_line_layout_and_strip_indentation():
    report, _ = _fixture("numbered_impression")
    assert extract_sections(report)["impression"] == (
        "1. Cardiomegaly with mild pulmonary vascular congestion\n2. Left basilar atelectasis\n3. No pneumothorax"
    )
    mimic, _ = _fixture("mimic_wet_read")
    sections = extract_sections(mimic)
    assert sections["impression"].startswith("1.  Mild interstitial") is False  # inner runs of spaces squeezed
    assert sections["impression"].split("\n") == [
        "1. Mild interstitial pulmonary edema, slightly worse than on the prior study.",
        "2. Small bilateral pleural effusions.",
    ]
    assert "____" not in " ".join(sections.values())  # the rule line between wet read and final report is layout


def test_findings_come_before_impression_and_other_sections_are_left_out():
    report = "INDICATION: cough.\nIMPRESSION: No acute process.\nFINDINGS: Lungs are clear.\nCOMPARISON: none."
    assert report_text(report) == "Lungs are clear. No acute process."


def test_whole_mode_keeps_every_section_without_header_words():
    report, _ = _fixture("mimic_wet_read")
    whole = report_text(report, mode="whole")
    assert whole.startswith("___ ___ ___ 9:15 PM Mild pulmonary edema. No focal consolidation. Dyspnea, evaluate")
    assert whole.endswith("2. Small bilateral pleural effusions.")
    for header in ("WET READ", "FINAL REPORT", "HISTORY", "COMPARISON", "FINDINGS", "IMPRESSION", "____"):
        assert header not in whole
    text, sentences = prepare_report(report, mode="whole")
    assert text == whole
    # the wet read's first line wraps into its first sentence: a single line break is not a sentence end
    assert sentences[:2] == ["___ ___ ___ 9:15 PM Mild pulmonary edema.", "No focal consolidation."]
    assert "Dyspnea, evaluate for edema." in sentences
    # a report that has no findings/impression is still usable as a whole
    no_findings, _ = _fixture("headers_without_findings")
    assert prepare_report(no_findings) == ("", [])
    assert prepare_report(no_findings, mode="whole")[0].startswith("Chest radiograph, two views. Shortness")
    with pytest.raises(ValueError, match="mode"):
        report_text(report, mode="impression_only")


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        ("Findings: Lungs clear. Conclusion: Normal study.",
         {"findings": "Lungs clear.", "impression": "Normal study."}),
        ("FINDINGS/IMPRESSION: Normal chest.", {"findings": "Normal chest."}),
        ("IMPRESSION:No acute process.", {"impression": "No acute process."}),
        ("Heart normal.  IMPRESSION: Normal.", {"preamble": "Heart normal.", "impression": "Normal."}),
        ("REASON FOR EXAMINATION: Cough.", {"indication": "Cough."}),
        ("impression\nNormal.", {"preamble": "impression\nNormal."}),  # lower-case word alone on a line: not a header
        ("The findings: unchanged.", {"preamble": "The findings: unchanged."}),  # a section name inside a sentence
        ("FINDINGS: One.\nFINDINGS: Two.", {"findings": "One.\nTwo."}),  # a repeated section is joined
        ("", {}),
        ("   \n ", {}),
    ],
)
def test_header_spellings(report, expected):
    assert extract_sections(report) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # MIMIC-CXR line wrapping mid-sentence
        ("There is a small left\n pleural effusion.  The heart\nis normal.",
         ["There is a small left pleural effusion.", "The heart is normal."]),
        # numbered items, inline and on separate lines, with two spaces after the number
        ("1. Mild cardiomegaly. 2. No effusion.", ["Mild cardiomegaly.", "No effusion."]),
        ("1.  Mild cardiomegaly.\n 2.  No effusion.", ["Mild cardiomegaly.", "No effusion."]),
        ("1) Mild cardiomegaly 2) no effusion", ["Mild cardiomegaly 2) no effusion"]),  # ")" mid-line is no marker
        ("1. Mild cardiomegaly 2. No effusion", ["Mild cardiomegaly", "No effusion"]),
        ("- Left effusion\n- Right effusion", ["Left effusion", "Right effusion"]),
        ("Heart size - normal.", ["Heart size - normal."]),  # a dash inside a sentence is not a bullet
        # abbreviations, decimals, measurements
        ("Dr. Smith was paged. Seen by Mr. Jones.", ["Dr. Smith was paged.", "Seen by Mr. Jones."]),
        ("Nodule measures 1.2 x 0.8 cm. No. 5 catheter, e.g. in the SVC.",
         ["Nodule measures 1.2 x 0.8 cm.", "No. 5 catheter, e.g. in the SVC."]),
        ("No effusion. No pneumothorax.", ["No effusion.", "No pneumothorax."]),
        ("Atelectasis vs. pneumonia, i.e. infection. Approx. 3 cm.",
         ["Atelectasis vs. pneumonia, i.e. infection.", "Approx. 3 cm."]),
        ("Called at 3 p.m. by phone. Seen at 9 a.m. The line is new.",
         ["Called at 3 p.m. by phone.", "Seen at 9 a.m.", "The line is new."]),
        ("Mass of 3.5 cm.Lungs clear.", ["Mass of 3.5 cm.", "Lungs clear."]),
        ("Large effusion.No pneumothorax.", ["Large effusion.", "No pneumothorax."]),
        # semicolons stay, trailing fragments count, placeholders are normalised and never a sentence alone
        ("Small effusion; no pneumothorax. Stable", ["Small effusion; no pneumothorax.", "Stable"]),
        ("XXXX XXXX. The XXXX is normal. [**Name**] ___.", ["The ___ is normal."]),
        ("Is there a pneumothorax? No! Stable...Clear", ["Is there a pneumothorax?", "No!", "Stable...Clear"]),
        # all caps, extra whitespace, paragraphs
        ("NO ACUTE PROCESS.   HEART SIZE NORMAL.", ["NO ACUTE PROCESS.", "HEART SIZE NORMAL."]),
        ("Heart normal\n\nLungs clear", ["Heart normal", "Lungs clear"]),
        ("", []),
        ("  \n\t ", []),
        (". . .", []),
    ],
)
def test_sentence_splitting(text, expected):
    assert split_sentences(text) == expected


def test_cleaned_text_splits_like_the_raw_text():
    for name in CASES:
        report, expected = _fixture(name)
        if expected["text"]:
            assert usable_sentences(expected["text"], min_tokens=1) == expected["sentences"], name
            assert usable_sentences(expected["text"]) == expected.get("sentences_min_3", expected["sentences"]), name


def test_count_tokens_ignores_placeholders():
    assert count_tokens("XXXX XXXX ___ [**Name**]") == 0
    assert count_tokens("The ___ is normal") == 3
    assert count_tokens("Nodule 1.2 x 0.8 cm") == 5
    assert count_tokens("x-ray, e.g. today") == 3
    assert count_tokens("") == 0


def test_short_and_empty_reports_are_unusable():
    assert prepare_report("") == ("", [])
    assert prepare_report("   \n\t ") == ("", [])
    assert prepare_report("XXXX XXXX.") == ("", [])
    assert prepare_report("No effusion.") == ("", [])  # 2 tokens
    assert prepare_report("No pleural effusion.") == ("No pleural effusion.", ["No pleural effusion."])
    assert prepare_report("FINDINGS:\nIMPRESSION:\n") == ("", [])
    assert prepare_report("No effusion.", min_tokens=2) == ("No effusion.", ["No effusion."])


def test_short_sentences_stay_in_the_pool_unless_a_minimum_is_asked_for():
    report = "FINDINGS: Cardiomegaly. No effusion. Lungs clear."  # 5 tokens, no sentence of 3
    whole = "Cardiomegaly. No effusion. Lungs clear."
    # the paper's 3-token filter is on the pair's text; short sentences often carry the finding
    assert prepare_report(report) == (whole, ["Cardiomegaly.", "No effusion.", "Lungs clear."])
    # with a sentence minimum that no sentence meets, the whole text is the only sentence
    assert prepare_report(report, min_sentence_tokens=3) == (whole, [whole])
    assert usable_sentences("Cardiomegaly. The lungs are clear.") == ["The lungs are clear."]
    assert usable_sentences("Cardiomegaly. The lungs are clear.", min_tokens=1) == [
        "Cardiomegaly.",
        "The lungs are clear.",
    ]


def test_clean_text():
    assert clean_text(" a\n b\t\tXXXX  [**Doe**] c \n") == "a b ___ ___ c"
    assert clean_text("Line one\n ______________\nLine two") == "Line one Line two"


def test_sampling_is_uniform_and_reproducible():
    sentences = ["a b c", "d e f", "g h i", "j k l", "m n o"]
    draws = 10_000
    for rng in (np.random.default_rng(123), random.Random(123), np.random.RandomState(123)):
        counts = Counter(sample_sentence(sentences, rng) for _ in range(draws))
        assert set(counts) == set(sentences)
        expected = draws / len(sentences)
        chi_square = sum((counts[s] - expected) ** 2 / expected for s in sentences)
        assert chi_square < 18.5  # 4 degrees of freedom, p = 0.001
    first = [sample_sentence(sentences, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same sentence
    assert sample_sentence(["only one"], random.Random(0)) == "only one"
    with pytest.raises(ValueError, match="empty"):
        sample_sentence([], random.Random(0))
    with pytest.raises(TypeError, match="rng"):
        sample_sentence(sentences, 3)


def test_sampling_a_biased_generator_is_detected():
    # the uniformity check above can fail: a sampler that favours the first sentence does not pass it
    sentences = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(0)
    counts = Counter(sentences[0] if rng.random() < 0.3 else sample_sentence(sentences, rng) for _ in range(10_000))
    expected = 10_000 / len(sentences)
    assert sum((counts[s] - expected) ** 2 / expected for s in sentences) > 18.5


_HEADERISH = st.sampled_from(
    ["FINDINGS:", "IMPRESSION:", "Findings", "impression:", "FINAL REPORT", "WET READ:", "1.", "2)", "-", "*", "\n",
     "\n\n", " ", ".", "?", "XXXX", "___", "[**Name**]", "No", "effusion", "Dr.", "e.g.", "3.5", "cm.", ";", "\u2028",
     "\r\n", "\u00a0", "ſummary:", "K", "\x1c"]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(_HEADERISH, st.text(max_size=5)), max_size=40).map("".join)))
def test_arbitrary_text_never_crashes(report):
    sections = extract_sections(report)
    assert all(isinstance(name, str) and isinstance(value, str) for name, value in sections.items())
    for mode in ("findings_impression", "whole"):
        text, sentences = prepare_report(report, mode=mode)
        assert (text == "") == (sentences == [])
        assert text == text.strip()
        if text:
            assert count_tokens(text) >= 3
            assert all(count_tokens(sentence) >= 1 for sentence in sentences) or sentences == [text]
            strict_pool = prepare_report(report, mode=mode, min_sentence_tokens=3)[1]
            assert all(count_tokens(sentence) >= 3 for sentence in strict_pool) or strict_pool == [text]
            rng = random.Random(0)
            assert all(sample_sentence(sentences, rng) in sentences for _ in range(5))
        for sentence in sentences:
            assert sentence and sentence == sentence.strip() and "\n" not in sentence
    for sentence in split_sentences(report):
        assert sentence and sentence == sentence.strip()
        assert count_tokens(sentence) >= 1


# --- Open-i de-identification placeholders glued to other characters -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("left 4XXXX rib", "left 4___ rib"),  # a digit glued before: the placeholder is still one
        ("3rd-5XXXX ribs", "3rd-5___ ribs"),
        ("Dr. XXXX was notified at XXXXPM on XXXX", "Dr. ___ was notified at ___PM on ___"),  # letters glued after
        ("XXXX-XXXX", "___-___"),
        ("Comparison: XXXX, XXXX", "Comparison: ___, ___"),
        ("(XXXX) and XXXXX/XXX", "(___) and ___/___"),
        ("dictated xxxx at 10am", "dictated ___ at 10am"),  # lower-case runs are placeholders too
        ("Normal chest x-XXXX.", "Normal chest x-___."),
    ],
)
def test_placeholders_glued_to_other_characters_are_normalised(text, expected):
    assert clean_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "xiphoid process", "Xray Chest PA and Lateral", "chest x-ray", "XR CHEST 2 VIEWS", "nodule 2 x 3 cm",
        "1.2 X 0.8 CM", "Exam", "EXAM", "Maxillary sinus", "XXL", "XX", "cranial nerve XII", "exxon",
    ],
)
def test_words_that_merely_contain_an_x_are_not_placeholders(text):
    # "XXL" (two X) is a size, not a placeholder: only runs of three or more X are (no word has three in a row)
    assert clean_text(text) == text
    assert split_sentences(text) == [text]


def test_glued_placeholders_do_not_count_as_tokens():
    assert count_tokens("XXXXPM") == 1  # "PM"
    assert count_tokens("4XXXX") == 1  # "4"
    assert count_tokens("XXXX-XXXX") == 0
    assert split_sentences("XXXX-XXXX. The left 4XXXX rib is intact.") == ["The left 4___ rib is intact."]


# --- a second, complete report inside a section; header metadata is never training text ------------------------------

NESTED = ("IMPRESSION: Exam: Chest 2 views. Date: XXXX. History: cough. FINDINGS: The lungs are clear. "
          "IMPRESSION: No acute disease.")


@pytest.mark.parametrize(
    "report",
    [
        NESTED,
        # as the Open-i reader joins the XML sections: the outer FINDINGS repeat the nested ones
        ("FINDINGS: The lungs are clear.\n" + NESTED),
        ("Findings: The lungs are clear.\nImpression: " + NESTED.removeprefix("IMPRESSION: ")),
        # the nested header block without full stops, and with the upper-case spellings
        ("FINDINGS: The lungs are clear.\nIMPRESSION: EXAM: Chest 2 views Date: XXXX Clinical history: cough "
         "FINDINGS: The lungs are clear. IMPRESSION: No acute disease."),
        # the outer impression repeats the nested one before the nested report starts
        ("FINDINGS: The lungs are clear.\nIMPRESSION: No acute disease. Exam: Chest 2 views. Reason for exam: "
         "cough. FINDINGS: The lungs are clear. IMPRESSION: No acute disease."),
    ],
)
def test_a_nested_report_gives_its_findings_once_and_its_impression_once(report):
    assert prepare_report(report) == ("The lungs are clear. No acute disease.",
                                      ["The lungs are clear.", "No acute disease."])
    sections = extract_sections(report)
    assert sections["findings"] == "The lungs are clear." and sections["impression"] == "No acute disease."


@pytest.mark.parametrize(
    ("report", "text"),
    [
        # a metadata field inside a findings line covers its own sentence; the findings go on after it
        ("FINDINGS: The lungs are clear. Date: XXXX. No pleural effusion.\nIMPRESSION: Normal chest.",
         "The lungs are clear. No pleural effusion. Normal chest."),
        ("FINDINGS: Heart size normal, Comparison: XXXX, XXXX. Lungs are clear.",
         "Heart size normal, Lungs are clear."),
        ("IMPRESSION: No acute disease. Exam date: XXXX", "No acute disease."),
        ("IMPRESSION: No acute disease. EXAM: CHEST PA AND LATERAL", "No acute disease."),
        ("IMPRESSION: No acute disease. Technique: PA and lateral views.", "No acute disease."),
        ("IMPRESSION: No acute disease.\nIndication: XXXX-year-old with cough.", "No acute disease."),
        ("Findings: Lungs clear.\nDATE/TIME: XXXX XXXXPM\nImpression: Normal chest.", "Lungs clear. Normal chest."),
        ("FINDINGS: Exam: Chest 2 views. The heart is normal. No effusion.",
         "The heart is normal. No effusion."),
    ],
)
def test_header_metadata_never_becomes_a_training_sentence(report, text):
    got, sentences = prepare_report(report)
    assert got == text
    for sentence in sentences:
        lowered = sentence.lower()
        assert not any(word in lowered for word in ("exam", "date", "comparison", "history", "indication",
                                                    "technique", "reason for")), sentence
