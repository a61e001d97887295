"""Report writing: a radiology report for a film's findings, from sentence templates kept as data.

Every present finding is asserted in FINDINGS and in IMPRESSION, with its side and severity, in one of several
phrasings; absent findings are only ever negated. The phrasings are the tables below: :data:`POSITIVE_TEMPLATES` (with
``str.format`` fields filled from the finding), :data:`NEGATIONS` and the normal, device and view statements. A
generator picks among them, so the tables' order is part of what a seed produces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .vocabulary import FINDINGS, ORDINALS, Finding, _pick

# (FINDINGS phrasings, IMPRESSION phrasings) asserting a finding, by (finding, variant) (see `_variant`). Fields:
# {side}, {severity}, {adjective} / {adverb} (cardiomegaly's degree), {level} (atelectasis, "mild " or nothing),
# {ribs} (the broken ribs, "fourth and fifth"), {lobe} / {lobe_adjective} (pneumonia's lobe, "lingula" /
# "lingular"). Each phrasing names its finding and no other category.
POSITIVE_TEMPLATES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("cardiomegaly", "any"): ((
        "The cardiac silhouette appears enlarged.",
        "The heart is {adverb} enlarged.",
        "{adjective} cardiomegaly.",
        "Enlarged cardiac silhouette.",
        "Heart size is increased, compatible with cardiomegaly.",
        "There is {adjective} enlargement of the cardiac silhouette.",
        "Enlarged heart size.",
    ), ("Cardiomegaly.", "{adjective} cardiomegaly.", "Enlarged cardiac silhouette.")),
    ("edema", "any"): ((
        "Bilateral perihilar opacities consistent with pulmonary edema.",
        "There is {severity} pulmonary edema.",
        "Interstitial edema with Kerley B lines.",
        "Findings are compatible with {severity} interstitial pulmonary edema.",
        "Pulmonary vascular congestion with interstitial edema.",
        "Perihilar haziness and indistinct pulmonary vessels, consistent with edema.",
        "{severity} pulmonary edema with Kerley B lines at the lung bases.",
    ), ("Pulmonary edema.", "{severity} pulmonary edema.", "Findings consistent with interstitial edema.")),
    ("atelectasis", "bilateral"): ((
        "{level}bibasilar atelectasis.",
        "Plate-like atelectasis at both lung bases.",
        "Linear opacities at both lung bases, consistent with atelectasis.",
        "There is bibasilar atelectasis with elevation of both hemidiaphragms.",
    ), ("Bibasilar atelectasis.", "{level}bibasilar atelectasis.")),
    ("atelectasis", "one side"): ((
        "{level}{side} basilar atelectasis.",
        "Linear opacity at the {side} lung base, consistent with atelectasis.",
        "Plate-like atelectasis at the {side} base with elevation of the {side} hemidiaphragm.",
        "Volume loss in the {side} lower lobe consistent with atelectasis.",
        "There is {side} lower lobe atelectasis.",
        "Elevation of the {side} hemidiaphragm with adjacent atelectasis.",
        "{side} basilar opacity likely reflects atelectasis.",
    ), ("{side} basilar atelectasis.", "Atelectasis at the {side} lung base.", "{side} lower lobe atelectasis.")),
    ("fracture", "several ribs"): ((
        "There are fractures of the {side} {ribs} posterior ribs.",
        "{side} {ribs} rib fractures.",
        "Displaced fractures of the {side} {ribs} posterior ribs.",
        "Fractures of the {side} {ribs} ribs with an adjacent extrapleural hematoma.",
        "Multiple {side} rib fractures involving the {ribs} ribs.",
    ), ("{side} rib fractures.", "Multiple {side} rib fractures.", "Displaced {side} {ribs} rib fractures.")),
    ("fracture", "one rib"): ((
        "There is a fracture of the {side} {ribs} posterior rib.",
        "{side} {ribs} rib fracture.",
        "Displaced fracture of the {side} {ribs} posterior rib.",
        "Cortical break with step-off in the {side} {ribs} rib, consistent with fracture.",
        "Fracture of the {side} {ribs} rib with an extrapleural hematoma.",
        "Displaced {side} {ribs} rib fracture with an adjacent extrapleural hematoma.",
    ), ("{side} rib fracture.", "Displaced {side} {ribs} rib fracture.", "{side} {ribs} rib fracture.")),
    ("pleural effusion", "bilateral"): ((
        "{severity} bilateral pleural effusions.",
        "There are bilateral pleural effusions.",
        "Blunting of both costophrenic angles due to pleural effusions.",
        "{severity} bilateral pleural effusions with menisci.",
    ), ("{severity} bilateral pleural effusions.", "Bilateral pleural effusions.")),
    ("pleural effusion", "one side"): ((
        "{severity} {side} pleural effusion.",
        "There is a {severity} {side} pleural effusion.",
        "{side} pleural effusion with a meniscus.",
        "A {severity} {side} pleural effusion obscures the {side} hemidiaphragm.",
        "Layering {side} pleural effusion.",
    ), ("{severity} {side} pleural effusion.", "{side} pleural effusion.")),
    ("pneumonia", "any"): ((
        "Focal consolidation in the {lobe} concerning for pneumonia.",
        "{lobe_adjective} pneumonia.",
        "Patchy airspace opacity in the {lobe}, consistent with pneumonia.",
        "There is consolidation in the {lobe} with air bronchograms.",
        "Dense consolidation in the {lobe}.",
        "Airspace consolidation in the {lobe}, compatible with pneumonia.",
    ), ("{lobe_adjective} pneumonia.", "Consolidation in the {lobe}, concerning for pneumonia.",
        "Findings concerning for {lobe_adjective} pneumonia.")),
    ("pneumothorax", "any"): ((
        "There is a {severity} {side} pneumothorax.",
        "{side} pneumothorax with a visible visceral pleural line.",
        "{severity} {side} apical pneumothorax.",
        "A {severity} {side} pneumothorax is present.",
        "Visceral pleural line along the {side} apex and lateral chest wall, consistent with pneumothorax.",
    ), ("{severity} {side} pneumothorax.", "{side} pneumothorax.")),
}
# FINDINGS phrasings that only fit one severity, after the others, by (finding, variant, severity).
SEVERITY_TEMPLATES: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("pleural effusion", "one side", "small"): (
        "Blunting of the {side} costophrenic angle due to a small pleural effusion.",),
}
# the words for cardiomegaly's degree: (adjective, adverb)
CARDIOMEGALY_DEGREES = {"mild": ("mild", "mildly"), "moderate": ("moderate", "moderately"),
                        "severe": ("marked", "markedly")}

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


def _lobe(side: str, zone: str) -> tuple[str, str]:
    """(noun phrase, adjective) of a lung zone: ("right lower lobe", "right lower lobe"), ("lingula", "lingular")."""
    if side == "left" and zone == "middle":
        return "lingula", "lingular"
    return f"{side} {zone} lobe", f"{side} {zone} lobe"


def _ribs_phrase(finding: Finding) -> str:
    """The broken ribs as words: "fourth", "fourth and fifth", "fourth, fifth and sixth"."""
    names = [ORDINALS[rib - 1] for rib in finding.ribs]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _variant(finding: Finding) -> str:
    """Which row of `POSITIVE_TEMPLATES` describes `finding`: laterality and rib count change the sentences."""
    if finding.name == "fracture":
        return "several ribs" if len(finding.ribs) > 1 else "one rib"
    if finding.name in ("atelectasis", "pleural effusion"):
        return "bilateral" if finding.side == "bilateral" else "one side"
    return "any"


def _template_fields(finding: Finding) -> dict[str, str | None]:
    """The values of the template fields that `finding` has (see `POSITIVE_TEMPLATES`)."""
    fields = {"side": finding.side, "severity": finding.severity}
    if finding.name == "cardiomegaly":
        fields["adjective"], fields["adverb"] = CARDIOMEGALY_DEGREES[finding.severity]
    elif finding.name == "atelectasis":
        fields["level"] = "" if finding.severity == "moderate" else "mild "
    elif finding.name == "fracture":
        fields["ribs"] = _ribs_phrase(finding)
    elif finding.name == "pneumonia":
        fields["lobe"], fields["lobe_adjective"] = _lobe(finding.side, finding.zone)
    return fields


def _positive_sentences(finding: Finding) -> tuple[list[str], list[str]]:
    """(FINDINGS phrasings, IMPRESSION phrasings) asserting `finding`; each names it and no other category."""
    variant = _variant(finding)
    if (finding.name, variant) not in POSITIVE_TEMPLATES:
        raise ValueError(f"unknown finding {finding.name!r}")
    body, summary = POSITIVE_TEMPLATES[(finding.name, variant)]
    body = body + SEVERITY_TEMPLATES.get((finding.name, variant, finding.severity), ())
    fields = _template_fields(finding)
    return [template.format(**fields) for template in body], [template.format(**fields) for template in summary]


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
    normal = _normal_statements(findings, present, rng)
    extras = [_pick(rng, DEVICE_SENTENCES[device]) for device in devices]
    body = _findings_section(positives, normal, extras, view, rng)
    return f"FINDINGS: {' '.join(body)}\nIMPRESSION: {_impression(impressions, rng)}"


def _normal_statements(findings: Sequence[Finding], present: set[str], rng: np.random.Generator) -> list[str]:
    """Normal statements for (some of) the absent findings, combined statements where they apply."""
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
    return normal


def _findings_section(positives: list[str], normal: list[str], extras: list[str], view: str | None,
                      rng: np.random.Generator) -> list[str]:
    """The sentences of FINDINGS: positives first as most reports do, else in anatomical disorder; devices last."""
    if rng.random() < 0.7:  # positives first, as most reports do; otherwise in anatomical disorder
        body = positives + [normal[i] for i in rng.permutation(len(normal))]
    else:
        mixed = positives + normal
        body = [mixed[i] for i in rng.permutation(len(mixed))]
    body += extras
    if view in VIEW_SENTENCES and rng.random() < 0.25:
        body.insert(0, _pick(rng, VIEW_SENTENCES[view]))
    return body


def _impression(impressions: list[str], rng: np.random.Generator) -> str:
    """IMPRESSION: the findings' summaries (numbered or run on when several), or a normal impression."""
    if not impressions:
        impression = _pick(rng, NO_FINDING_IMPRESSIONS)
    elif len(impressions) == 1:
        impression = impressions[0]
    elif rng.random() < 0.6:
        impression = " ".join(f"{i + 1}. {sentence}" for i, sentence in enumerate(impressions))
    else:
        impression = " ".join(impressions)
    return impression


__all__ = [
    "CLEAR_LUNGS",
    "DEVICE_SENTENCES",
    "NEGATIONS",
    "NORMAL_BONES",
    "NO_FINDING_IMPRESSIONS",
    "POSITIVE_TEMPLATES",
    "VIEW_SENTENCES",
    "write_report",
]
