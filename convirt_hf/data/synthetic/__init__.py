"""A built-in synthetic corpus: chest-radiograph-like images with reports that describe them.

It lets the whole ConVIRT pipeline (pretraining, linear probe, retrieval) run offline on a laptop CPU in minutes and
show the paper's effects in miniature. Each image is a frontal chest film drawn from a patient's random anatomy (body
habitus, lung shape, heart size within normal limits, rib spacing) and a study's random acquisition (PA or AP view,
positioning, rotation, inspiration, exposure, contrast, noise, support devices). The eight categories of the paper's
retrieval set are drawn as large findings that stay visible when the image is shrunk to 64 pixels:

- atelectasis: a wedge of collapsed lower lobe at a lung base and, above it, a dense plate-like band, with volume loss
  (elevated hemidiaphragm, mediastinal shift towards the side); all of it always, as reports may describe any of it;
- cardiomegaly: a wide heart (cardiothoracic ratio 0.56 to 0.68 instead of about 0.42), an ellipse leaning less the
  wider it is, so it keeps a plausible shape;
- edema: bilateral perihilar ("bat-wing") haze, indistinct vessels and Kerley B lines;
- fracture: one to three consecutive posterior ribs broken at their posterolateral bend, each with a lucent gap and a
  step-off of the lateral fragment, and an extrapleural hematoma (a lens along the inner chest wall) at that level;
- pleural effusion: homogeneous fluid filling a lung base up to a meniscus, blunting the costophrenic angle;
- pneumonia: a large patchy consolidation with air bronchograms in one lung zone;
- pneumothorax: a black band without lung markings along the apex and lateral chest wall, a visible visceral
  pleural line and the collapsed lung's edge;
- no finding.

Sides are the patient's: the patient's left is on the image's right. Reports have FINDINGS and IMPRESSION sections,
several phrasings and synonyms per finding, laterality and severity words, normal statements and realistic negations
of absent findings ("No pleural effusion or pneumothorax."). Text queries (five per category) follow the style of the
paper's retrieval queries and are held out: the report templates never produce them verbatim.

Rows have the shared record columns plus ``category``, the scheduled primary category (see `SYNTHETIC_COLUMNS`).

Every row is drawn from generators seeded by (seed, split, patient) for the anatomy and (seed, split, row) for the
study, so a corpus is identical for a seed whatever the order or the number of processes that generate it, and
different for another seed.

    python -m convirt_hf.data.synthetic --output /tmp/synthetic --grid /tmp/synthetic_grid.png

The package's rooms: :mod:`.vocabulary` (the findings and their words), :mod:`.anatomy`, :mod:`.drawing`,
:mod:`.lesions` and :mod:`.render` (the film), :mod:`.writing` (the report, from sentence tables),
:mod:`.config` (what a corpus holds), :mod:`.corpus` (generation, cache, fingerprint) and :mod:`.cli`.
"""

from __future__ import annotations

from .anatomy import Anatomy
from .cli import main
from .config import (
    CORPUS_FORMAT_VERSION,
    RETRIEVAL_SPLITS,
    SPLITS,
    SYNTHETIC_COLUMNS,
    SYNTHETIC_FEATURES,
    SyntheticCorpusConfig,
    primary_categories,
    primary_category,
)
from .corpus import (
    corpus_fingerprint,
    encode_png,
    ensure_synthetic_corpus,
    generate_row,
    generate_synthetic_corpus,
    load_synthetic_corpus,
)
from .render import BONE_DENSITY, render_radiograph, sample_images, save_sample_grid
from .vocabulary import (
    CARDIOTHORACIC_RATIOS,
    CATEGORIES,
    CATEGORY_KEYWORDS,
    DEVICES,
    FINDINGS,
    ORDINALS,
    SEVERITIES,
    SIDES,
    TEXT_QUERIES,
    Finding,
    make_finding,
    sample_findings,
)
from .writing import (
    CLEAR_LUNGS,
    DEVICE_SENTENCES,
    NEGATIONS,
    NO_FINDING_IMPRESSIONS,
    NORMAL_BONES,
    POSITIVE_TEMPLATES,
    VIEW_SENTENCES,
    write_report,
)

__all__ = [
    "BONE_DENSITY",
    "CARDIOTHORACIC_RATIOS",
    "CATEGORIES",
    "CATEGORY_KEYWORDS",
    "CLEAR_LUNGS",
    "CORPUS_FORMAT_VERSION",
    "DEVICES",
    "DEVICE_SENTENCES",
    "FINDINGS",
    "NEGATIONS",
    "NORMAL_BONES",
    "NO_FINDING_IMPRESSIONS",
    "ORDINALS",
    "POSITIVE_TEMPLATES",
    "RETRIEVAL_SPLITS",
    "SEVERITIES",
    "SIDES",
    "SPLITS",
    "SYNTHETIC_COLUMNS",
    "SYNTHETIC_FEATURES",
    "TEXT_QUERIES",
    "VIEW_SENTENCES",
    "Anatomy",
    "Finding",
    "SyntheticCorpusConfig",
    "corpus_fingerprint",
    "encode_png",
    "ensure_synthetic_corpus",
    "generate_row",
    "generate_synthetic_corpus",
    "load_synthetic_corpus",
    "main",
    "make_finding",
    "primary_categories",
    "primary_category",
    "render_radiograph",
    "sample_findings",
    "sample_images",
    "save_sample_grid",
    "write_report",
]
