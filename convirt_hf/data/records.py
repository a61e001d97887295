"""The one record shape every data source produces.

Every reader (generic manifests, imagefolders, Hub datasets, MIMIC-CXR-JPG, CheXpert-Plus, Open-i, the synthetic
corpus, the preprocessed shards) yields rows with exactly these columns, so training and evaluation never need to
know where a pair came from.

- ``id``: a stable, unique string for the row (used in skip logs and results).
- ``image``: the image, as a ``datasets.Image`` feature (a path or encoded bytes; decoded lazily).
- ``text``: the report text used for training: the FINDINGS + IMPRESSION sections when the report has them,
  otherwise the whole cleaned report. Empty for label-only data sets.
- ``sentences``: ``text`` split into sentences that pass the token filter; pretraining samples one of them
  uniformly each time a row is drawn (the paper's t_u).
- ``labels``: names of the findings present (e.g. ``["cardiomegaly", "pleural effusion"]``); empty when unknown.
  Names are lower-case; label vocabularies are kept by the tasks that use them.
- ``patient_id``, ``study_id``, ``view``: optional metadata (``None`` when the source lacks it). ``patient_id``
  drives patient-level splits and patient-level metric aggregation.
"""

from __future__ import annotations

from datasets import Features, Image, List, Value

RECORD_COLUMNS = ("id", "image", "text", "sentences", "labels", "patient_id", "study_id", "view")

RECORD_FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "text": Value("string"),
        "sentences": List(Value("string")),
        "labels": List(Value("string")),
        "patient_id": Value("string"),
        "study_id": Value("string"),
        "view": Value("string"),
    }
)


def make_record(
    id: str,
    image,
    text: str = "",
    sentences: list[str] | None = None,
    labels: list[str] | None = None,
    patient_id: str | None = None,
    study_id: str | None = None,
    view: str | None = None,
) -> dict:
    """Builds one row in the shared record shape (``image`` may be a path, bytes dict or PIL image)."""
    return {
        "id": str(id),
        "image": image,
        "text": text,
        "sentences": list(sentences or []),
        "labels": [label.lower() for label in (labels or [])],
        "patient_id": None if patient_id is None else str(patient_id),
        "study_id": None if study_id is None else str(study_id),
        "view": view,
    }


def report_key(study_id: str | None, row_id: str) -> str:
    """
    Which report a row's text comes from, for counting reports: its study (one report per study in MIMIC-CXR,
    CheXpert-Plus and Open-i, and for generic sources given a study column), else the row itself.
    """
    return f"study:{study_id}" if study_id else f"row:{row_id}"


def dataset_report_keys(dataset) -> set[str]:
    """The :func:`report_key` of every row of a record `datasets.Dataset` (two string columns read, no image)."""
    if len(dataset) == 0:
        return set()
    return {report_key(study, row_id) for study, row_id in zip(dataset["study_id"], dataset["id"])}
