"""Retrieval evaluation: the CheXpert 8 x N loader, zero-shot classification by prompts, embedding maps, the CLI."""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convirt_hf.evaluation import chexpert
from convirt_hf.evaluation.chexpert import (
    CHEXPERT_COLUMNS,
    CHEXPERT_TEXT_QUERIES,
    RETRIEVAL_CATEGORIES,
    build_chexpert_retrieval_set,
    load_text_queries,
    row_category,
    select_chexpert_retrieval,
)
from convirt_hf.evaluation.tasks import ClassificationTask
from convirt_hf.evaluation.zero_shot import (
    class_prompt_embeddings,
    load_retrieval_set,
    score_zero_shot,
    zero_shot_classify,
)

# CheXpert-v1.0's train.csv header, verbatim.
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
                   "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
                   "Fracture,Support Devices")
CLEAN_PER_CATEGORY = 6

# Rows that must never be chosen: (reason, labels); each gets its own patient in the 9xxxx range.
EXCLUDED_ROWS = [
    ("uncertain", {"Cardiomegaly": "1.0", "Edema": "-1.0"}),
    ("uncertain", {"Pneumothorax": "-1.0"}),
    ("uncertain", {"No Finding": "1.0", "Atelectasis": "-1.0"}),
    ("multiple_positive", {"Cardiomegaly": "1.0", "Edema": "1.0"}),
    ("multiple_positive", {"No Finding": "1.0", "Fracture": "1.0"}),
    ("no_positive", {"Lung Opacity": "1.0", "Edema": "0.0"}),
    ("no_positive", {}),
]


def _line(path: str, frontal: bool, labels: dict[str, str], sex: str = "Female", age: int = 60) -> dict:
    row = {column: "" for column in CHEXPERT_COLUMNS}
    row.update({"Path": path, "Sex": sex, "Age": str(age), "Frontal/Lateral": "Frontal" if frontal else "Lateral",
                "AP/PA": ("AP" if age % 2 else "PA") if frontal else ""})
    row.update(labels)
    return row


def write_chexpert_fixture(root: Path, shuffle_seed: int | None = None, folder: str = "CheXpert-v1.0") -> Path:
    """A tiny train.csv in CheXpert-v1.0's exact layout, and a 16 x 16 JPEG for every row."""
    rows = []
    patient = 1
    for category in RETRIEVAL_CATEGORIES:
        column = chexpert.CATEGORY_COLUMNS[category]
        for index in range(CLEAN_PER_CATEGORY):
            labels = {column: "1.0"}
            if index == 0:  # negatives and unmentioned labels, and an ignored other observation: still clean
                labels.update({name: "0.0" for name in chexpert.CATEGORY_COLUMNS.values() if name != column})
                labels["Support Devices"] = "1.0"
            if index == 1 and category != "no finding":
                labels["Lung Opacity"] = "1.0"  # clean by default, left out with exclude_other_findings
            rows.append(_line(f"{folder}/train/patient{patient:05d}/study1/view1_frontal.jpg", True, labels,
                              age=40 + index))
            patient += 1
    # a second study of patient 1 (a cardiomegaly film of an atelectasis patient): patient sharing across categories
    rows.append(_line(f"{folder}/train/patient00001/study2/view1_frontal.jpg", True, {"Cardiomegaly": "1.0"}))
    # a lateral view of a clean row's study
    rows.append(_line(f"{folder}/train/patient00002/study1/view2_lateral.jpg", False, {"Atelectasis": "1.0"}))
    for number, (_, labels) in enumerate(EXCLUDED_ROWS):
        rows.append(_line(f"{folder}/train/patient9{number:04d}/study1/view1_frontal.jpg", True, labels))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    csv_path = base / "train.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CHEXPERT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    rng = np.random.default_rng(0)
    for row in rows:
        image = root / row["Path"]
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(image, format="JPEG")
    return csv_path


@pytest.fixture()
def chexpert_csv(tmp_path) -> Path:
    return write_chexpert_fixture(tmp_path / "data")


def _ids(records) -> list[str]:
    return [record["id"] for record in records]


# --------------------------------------------------------------------------------------------- CheXpert loader


def test_fixture_has_the_exact_chexpert_header(chexpert_csv):
    assert chexpert_csv.read_text().splitlines()[0] == CHEXPERT_HEADER


def test_row_category_rules():
    assert row_category({"Edema": 1}) == ("edema", "clean")
    assert row_category({"Edema": 1, "Cardiomegaly": 0, "Lung Opacity": 1, "Support Devices": 1}) == ("edema", "clean")
    assert row_category({"Edema": 1, "Cardiomegaly": -1}) == (None, "uncertain")
    assert row_category({"Edema": -1}) == (None, "uncertain")
    assert row_category({"Edema": 1, "No Finding": 1}) == (None, "multiple_positive")
    assert row_category({"Lung Opacity": 1}) == (None, "no_positive")
    assert row_category({"Edema": 1, "Lung Opacity": -1}, exclude_other_findings=True) == (None, "other_findings")
    assert row_category({"Edema": 1, "Support Devices": 1}, exclude_other_findings=True) == ("edema", "clean")


def test_selection_keeps_only_clean_rows_disjoint_and_counted(chexpert_csv):
    selection = select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1, seed=0)
    counts = selection.counts
    assert counts["rows"] == 8 * CLEAN_PER_CATEGORY + 2 + len(EXCLUDED_ROWS)
    assert counts["lateral"] == 1 and counts["uncertain"] == 3 and counts["multiple_positive"] == 2
    assert counts["no_positive"] == 2 and counts["missing_images"] == 0 and selection.missing == []
    expected_clean = {category: CLEAN_PER_CATEGORY for category in RETRIEVAL_CATEGORIES}
    expected_clean["cardiomegaly"] += 1  # patient 1's second study
    assert counts["clean"] == expected_clean
    assert counts["selected"] == {c: {"candidates": 3, "queries": 1} for c in RETRIEVAL_CATEGORIES}

    candidates, queries = selection.candidates, selection.queries
    assert len(candidates) == 24 and len(queries) == 8
    chosen = _ids(candidates) + _ids(queries)
    assert len(set(chosen)) == len(chosen)  # disjoint, no duplicates
    assert not any("patient9" in path or "lateral" in path for path in chosen)
    query_patients = {record["patient_id"] for record in queries}
    assert len(query_patients) == 8  # one query per patient
    assert not query_patients & {record["patient_id"] for record in candidates}
    csv_rows = {row["Path"]: row for row in csv.DictReader(chexpert_csv.open())}
    for record in candidates + queries:
        (category,) = record["labels"]
        row = csv_rows[record["id"]]
        positives = [c for c, column in chexpert.CATEGORY_COLUMNS.items() if row[column] == "1.0"]
        assert positives == [category] and not any(row[col] == "-1.0" for col in chexpert.CATEGORY_COLUMNS.values())
        assert Path(record["image"]).is_file() and record["view"] in ("AP", "PA")
        assert record["patient_id"].startswith("patient") and record["study_id"].startswith(record["patient_id"])
    assert {r["labels"][0] for r in queries} == set(RETRIEVAL_CATEGORIES)


def test_selection_is_seeded_and_independent_of_row_order(tmp_path, chexpert_csv):
    first = select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1, seed=0)
    again = select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1, seed=0)
    shuffled_csv = write_chexpert_fixture(tmp_path / "shuffled", shuffle_seed=3)
    shuffled = select_chexpert_retrieval(shuffled_csv, candidates_per_category=3, queries_per_category=1, seed=0)
    other = select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1, seed=1)
    assert _ids(first.candidates) == _ids(again.candidates) == _ids(shuffled.candidates)
    assert _ids(first.queries) == _ids(again.queries) == _ids(shuffled.queries)
    assert (_ids(other.candidates), _ids(other.queries)) != (_ids(first.candidates), _ids(first.queries))


def test_frontal_only_and_other_findings_switches(chexpert_csv):
    everything = select_chexpert_retrieval(chexpert_csv, candidates_per_category=4, queries_per_category=1,
                                           frontal_only=False)
    assert everything.counts["lateral"] == 0 and everything.counts["clean"]["atelectasis"] == CLEAN_PER_CATEGORY + 1
    strict = select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1,
                                       exclude_other_findings=True)
    assert strict.counts["other_findings"] == 7  # the Lung Opacity rows of the 7 findings
    assert strict.counts["clean"]["edema"] == CLEAN_PER_CATEGORY - 1


def test_missing_image_is_logged_counted_and_replaced(chexpert_csv, caplog):
    before = select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1, seed=0)
    # the first query walked for edema: delete its file, so the same walk meets it first and must skip it
    victim = next(record for record in before.queries if record["labels"] == ["edema"])
    Path(victim["image"]).unlink()
    with caplog.at_level(logging.WARNING, logger="convirt_hf.evaluation.chexpert"):
        after = select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1, seed=0)
    assert after.missing == [victim["id"]] and after.counts["missing_images"] == 1
    assert victim["image"] in caplog.text
    assert victim["id"] not in _ids(after.candidates) + _ids(after.queries)
    assert len(after.queries) == 8 and len(after.candidates) == 24
    edema_query = [r for r in after.queries if r["labels"] == ["edema"]]
    assert len(edema_query) == 1 and edema_query[0]["id"] != victim["id"]


def test_too_few_clean_rows_is_a_clear_error(chexpert_csv):
    with pytest.raises(ValueError, match=r"too few clean rows for category 'atelectasis' \(6 clean\).*"
                                         r"category 'cardiomegaly' \(7 clean\).*needs 10 candidates \+ 1 queries = 11"):
        select_chexpert_retrieval(chexpert_csv, candidates_per_category=10, queries_per_category=1)


def test_too_few_existing_images_names_the_category(chexpert_csv):
    root = chexpert_csv.parent.parent
    for row in csv.DictReader(chexpert_csv.open()):
        if row["Fracture"] == "1.0" and row["No Finding"] != "1.0":
            (root / row["Path"]).unlink()
    with pytest.raises(ValueError, match=r"6 image files missing.*category 'fracture': 0 of 1 queries and 0 of 3"):
        select_chexpert_retrieval(chexpert_csv, candidates_per_category=3, queries_per_category=1)


def test_build_writes_a_retrieval_set_folder(tmp_path, chexpert_csv):
    output = tmp_path / "chexpert-8x3"
    build_chexpert_retrieval_set(chexpert_csv, output, candidates_per_category=3, queries_per_category=1)
    retrieval = load_retrieval_set(output)
    assert len(retrieval.candidates) == 24 and len(retrieval.queries) == 8
    assert sorted(set(retrieval.candidate_labels)) == sorted(RETRIEVAL_CATEGORIES)
    assert retrieval.text_queries == CHEXPERT_TEXT_QUERIES
    assert retrieval.candidates[0]["image"].size == (16, 16)  # the JPEG's bytes are embedded
    info = json.loads((output / "retrieval_set.json").read_text())
    assert info["counts"]["uncertain"] == 3 and "not the paper's" in info["text_queries"]
    with pytest.raises(FileExistsError, match="overwrite"):
        build_chexpert_retrieval_set(chexpert_csv, output, candidates_per_category=3, queries_per_category=1)
    custom = {category: [f"{category} sentence one.", f"{category} sentence two."] for category in RETRIEVAL_CATEGORIES}
    (tmp_path / "queries.json").write_text(json.dumps(custom))
    build_chexpert_retrieval_set(chexpert_csv, output, candidates_per_category=3, queries_per_category=1, seed=1,
                                 text_queries=tmp_path / "queries.json", overwrite=True)
    assert load_retrieval_set(output).text_queries == custom
    assert json.loads((output / "retrieval_set.json").read_text())["text_queries"] == "user-supplied"


def test_listed_set_csv(tmp_path, chexpert_csv, caplog):
    root = chexpert_csv.parent.parent
    rows = list(csv.DictReader(chexpert_csv.open()))
    edema = [row["Path"] for row in rows if row["Edema"] == "1.0" and "patient9" not in row["Path"]][:4]
    fracture = [row["Path"] for row in rows if row["Fracture"] == "1.0"][:3]
    listed = tmp_path / "listed.csv"
    lines = ["Path,category,role"] + [f"{p},edema,candidate" for p in edema[:3]] + [f"{edema[3]},Edema,query"]
    lines += [f"{p},fracture,candidate" for p in fracture[:2]] + [f"{fracture[2]},fracture,query"]
    lines += ["CheXpert-v1.0/train/patient77777/study1/x.jpg,edema,candidate"]  # no such file
    listed.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="convirt_hf.evaluation.chexpert"):
        build_chexpert_retrieval_set(listed, tmp_path / "listed_set", root=root)
    assert "patient77777" in caplog.text
    retrieval = load_retrieval_set(tmp_path / "listed_set")
    assert retrieval.candidate_labels == ["edema"] * 3 + ["fracture"] * 2
    assert retrieval.query_labels == ["edema", "fracture"]
    assert list(retrieval.text_queries) == ["edema", "fracture"]  # the defaults, restricted to the set's categories
    info = json.loads((tmp_path / "listed_set" / "retrieval_set.json").read_text())
    assert info["counts"]["missing_images"] == 1 and info["source"] == "listed"
    listed.write_text("Path,category,role\nCheXpert-v1.0/a.jpg,edema,reference\n")
    with pytest.raises(ValueError, match="role must be one of"):
        build_chexpert_retrieval_set(listed, tmp_path / "bad", root=root)


def test_text_queries_are_five_project_sentences_per_category(tmp_path):
    assert list(CHEXPERT_TEXT_QUERIES) == list(RETRIEVAL_CATEGORIES)
    for sentences in CHEXPERT_TEXT_QUERIES.values():
        assert len(sentences) == len(set(sentences)) == 5
    (tmp_path / "partial.json").write_text(json.dumps({"edema": ["Pulmonary edema."]}))
    with pytest.raises(ValueError, match=r"missing \['atelectasis'"):
        load_text_queries(tmp_path / "partial.json", RETRIEVAL_CATEGORIES)
    with pytest.raises(ValueError, match="non-empty list"):
        load_text_queries({"edema": []})


# ------------------------------------------------------------------------------------ zero-shot classification


class VectorProcessor:
    """Texts become the index of a known embedding; "images" are the embedding vectors themselves."""

    def __init__(self, sentences: list[str]):
        self.index = {sentence: i for i, sentence in enumerate(sentences)}

    def __call__(self, images=None, text=None):
        if text is not None:
            ids = torch.tensor([[self.index[sentence]] for sentence in text])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return {"pixel_values": torch.stack([torch.as_tensor(image, dtype=torch.float32) for image in images])}


class VectorModel(nn.Module):
    def __init__(self, text_vectors: torch.Tensor, tau: float = 0.1):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.text_vectors = text_vectors
        self.config = SimpleNamespace(tau=tau)

    def get_text_features(self, input_ids, attention_mask=None, normalize=False):
        vectors = self.text_vectors[input_ids[:, 0]]
        return F.normalize(vectors, dim=-1) if normalize else vectors

    def get_image_features(self, pixel_values, normalize=False):
        return F.normalize(pixel_values, dim=-1) if normalize else pixel_values


PROMPTS = {"effusion": ["fluid one", "fluid two"], "normal": ["clear"], "edema": ["wet"]}
TEXT_VECTORS = torch.tensor([[1.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]])


def vector_setup():
    return VectorModel(TEXT_VECTORS), VectorProcessor(["fluid one", "fluid two", "clear", "wet"])


def test_class_embeddings_average_normalised_prompts_then_renormalise():
    model, processor = vector_setup()
    embeddings = class_prompt_embeddings(model, processor, PROMPTS)
    # "fluid two" is (0, 3, 0, 0): normalised before averaging, so the class sits at 45 degrees, not at (1, 3)
    expected = torch.tensor([[1.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    torch.testing.assert_close(embeddings, F.normalize(expected, dim=-1))
    with pytest.raises(ValueError, match="non-empty list"):
        class_prompt_embeddings(model, processor, {"normal": []})


def test_zero_shot_classify_by_hand():
    model, processor = vector_setup()
    images = [[1.0, 1.0, 0, 0], [0, 0, 5.0, 0], [2.0, 0, 0, 0], [0, 0.2, 0, 1.0]]
    output = zero_shot_classify(model, processor, images, PROMPTS)
    assert output.classes == ["effusion", "normal", "edema"] and output.tau == 0.1
    s = 2 ** -0.5
    second = 0.2 / (1.04 ** 0.5)
    expected = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [s, 0, 0], [s * second, 0, 1 / 1.04 ** 0.5]])
    torch.testing.assert_close(output.similarities, expected)
    torch.testing.assert_close(output.probabilities, torch.softmax(expected / 0.1, dim=-1))
    assert output.predictions() == ["effusion", "normal", "effusion", "edema"]
    torch.testing.assert_close(zero_shot_classify(model, processor, images, PROMPTS, tau=1.0).probabilities,
                               torch.softmax(expected, dim=-1))

    labels = [["effusion"], ["normal"], ["effusion"], ["edema"]]
    multiclass = ClassificationTask("kind", "multiclass", ["effusion", "normal", "edema"])
    scores = score_zero_shot(multiclass, output, labels)
    assert scores["accuracy"] == 1.0 and scores["auc"] == 1.0
    wrong = score_zero_shot(multiclass, output, [["normal"], ["normal"], ["effusion"], ["edema"]])
    assert wrong["accuracy"] == pytest.approx(0.75)
    # a multi-class task over a subset of the prompt classes: softmax over the task's classes only
    subset = score_zero_shot(ClassificationTask("two", "multiclass", ["effusion", "edema"]), output,
                             [["effusion"], ["edema"], ["effusion"], ["edema"]])
    assert subset["accuracy"] == 0.75  # image 1 ties (0, 0) -> argmax picks effusion, wrong for its edema label
    binary = score_zero_shot(ClassificationTask("effusion", "binary", ["effusion"]), output, labels,
                             patient_ids=["p1", "p1", "p2", "p3"])
    assert binary["auc"] == 1.0 and not any("accuracy" in name for name in binary)
    multilabel = score_zero_shot(ClassificationTask("f", "multilabel", ["effusion", "edema"]), output,
                                 [["effusion"], [], ["effusion", "edema"], []])
    # edema's score is its softmax share: image 2 (sims s, 0, 0) beats images 0 and 1 but not image 3
    assert multilabel["auc/effusion"] == 1.0 and multilabel["auc/edema"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"no prompts for the classes \['pneumothorax'\]"):
        score_zero_shot(ClassificationTask("p", "binary", ["pneumothorax"]), output, labels)


# ----------------------------------------------------------------------------------------------- embedding map


def test_embedding_map_png_size_and_determinism(tmp_path, caplog):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from convirt_hf.evaluation.embedding_map import plot_embedding_map, umap_available

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    embeddings = np.concatenate([centre + rng.normal(size=(10, 8)) for centre in centres])
    labels = [name for name in ("edema", "fracture", "no finding") for _ in range(10)]
    with caplog.at_level(logging.INFO, logger="convirt_hf.evaluation.embedding_map"):
        first = plot_embedding_map(embeddings, labels, tmp_path / "a.png", panel_size=160, legend_width=120, seed=1)
    second = plot_embedding_map(torch.as_tensor(embeddings), labels, tmp_path / "b.png", panel_size=160,
                                legend_width=120, seed=1)
    methods = 2 if umap_available() else 1
    if not umap_available():
        assert "umap-learn is not installed" in caplog.text
    with Image.open(first.path) as image:
        assert image.format == "PNG" and image.size == (160 * methods + 120, 160) == first.size
        pixels = np.asarray(image.convert("RGB"))
    with Image.open(second.path) as image:
        assert np.array_equal(pixels, np.asarray(image.convert("RGB")))
    np.testing.assert_array_equal(first.coordinates["tsne"], second.coordinates["tsne"])
    assert first.coordinates["tsne"].shape == (30, 2)
    assert len({tuple(pixel) for pixel in pixels.reshape(-1, 3)[::7]}) > 3  # coloured points, not a blank canvas


def test_embedding_map_without_the_eval_extra_names_it(tmp_path, monkeypatch):
    from convirt_hf.evaluation.embedding_map import plot_embedding_map

    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(ImportError, match=r'pip install "convirt-hf\[eval\]"'):
        plot_embedding_map(np.zeros((5, 2)), ["a"] * 5, tmp_path / "x.png")


# ------------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from convirt_hf.data.synthetic import SyntheticCorpusConfig, generate_synthetic_corpus

    config = SyntheticCorpusConfig(seed=0, image_size=32, num_pretrain=8, num_validation=0, num_cls_train=0,
                                   num_cls_val=0, num_cls_test=24, retrieval_candidates_per_category=6,
                                   retrieval_queries_per_category=1)
    return generate_synthetic_corpus(tmp_path_factory.mktemp("corpus") / "synthetic", config)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    from convirt_hf import ConvirtModel, ConvirtProcessor

    from helpers import tiny_config

    folder = tmp_path_factory.mktemp("tiny-convirt")
    torch.manual_seed(0)
    ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size)).save_pretrained(folder)
    ConvirtProcessor.from_tokenizer(tokenizer, image_size=32, resize_size=36).save_pretrained(folder)
    return folder


def test_cli_end_to_end_on_the_synthetic_corpus(corpus, model_dir, tmp_path, capsys):
    pytest.importorskip("sklearn")
    from convirt_hf.training import retrieval as retrieval_cli

    output, png = tmp_path / "retrieval.json", tmp_path / "map.png"
    argv = ["--models", str(model_dir), "--retrieval_set", str(corpus), "--output", str(output), "--zero_shot",
            "--embedding_map", str(png), "--embedding_map_methods", "tsne"]
    returned = retrieval_cli.main(argv)
    printed = capsys.readouterr().out
    assert "| image->image |" in printed and "n/a" in printed and "zero-shot classification" in printed

    saved = json.loads(output.read_text())
    assert set(saved) == {"metadata", "results", "summary"} and saved["results"] == json.loads(
        json.dumps(returned["results"]))
    rows = [row for row in saved["results"] if row["protocol"] == "retrieval"]
    mean = {row["metric"]: row for row in rows if row["category"] == "mean"}
    assert set(mean) == {f"{d}/P@{k}" for d in ("image->image", "text->image") for k in (5, 10, 50, 100)}
    for direction in ("image->image", "text->image"):
        assert 0.0 <= mean[f"{direction}/P@5"]["value"] <= 1.0
        for k in (10, 50, 100):  # 6 candidates per category
            assert mean[f"{direction}/P@{k}"]["value"] is None
    assert mean["image->image/P@10"]["headline"] and mean["image->image/P@5"]["num_candidates"] == 48
    per_category = [row for row in rows if row["category"] != "mean"]
    assert len(per_category) == 2 * 8 * 4
    cardio = next(row for row in per_category if row["metric"] == "text->image/P@5/cardiomegaly")
    assert cardio["num_queries"] == 5 and cardio["num_candidates"] == 6 and cardio["value"] is not None
    assert {key for key in ("model", "data", "task", "protocol", "fraction", "seed", "metric", "value")} <= set(cardio)

    zero_shot = [row for row in saved["results"] if row["protocol"] == "zero_shot"]
    assert {row["task"] for row in zero_shot} == {"category", "findings", "pneumonia", "fracture"}
    accuracy = next(row for row in zero_shot if row["task"] == "category" and row["metric"] == "accuracy")
    assert 0.0 <= accuracy["value"] <= 1.0 and accuracy["headline"]
    assert {row["metric"] for row in zero_shot if row["task"] == "fracture"} == {"auc"}  # binary: AUC only
    assert {row["metric"] for row in saved["summary"]} >= {"image->image/P@5", "accuracy"}

    metadata = saved["metadata"]
    assert metadata["protocol"] == "retrieval" and metadata["num_candidates"] == 48
    assert metadata["ks"] == [5, 10, 50, 100]
    assert metadata["chance_rate"] == pytest.approx(1 / 8) and metadata["zero_shot"]["split"] == "cls_test"
    with Image.open(png) as image:
        assert image.size == (480 + 200, 480)

    # refusing to overwrite, by argument name; and the CLI's one-line error with exit status 1
    with pytest.raises(ValueError, match=r"--embedding_map .*exists: pass --overwrite"):
        retrieval_cli.main(argv)
    with pytest.raises(ValueError, match=r"--output .*exists: pass --overwrite"):
        retrieval_cli.main(argv[:-5])
    assert json.loads(output.read_text()) == saved


def test_cli_refusal_is_one_error_line_and_exit_1(corpus, model_dir, tmp_path, monkeypatch, caplog):
    from convirt_hf.training import retrieval as retrieval_cli

    output = tmp_path / "exists.json"
    output.write_text("{}")
    monkeypatch.setattr(sys, "argv", ["retrieval.py", "--models", str(model_dir), "--retrieval_set", str(corpus),
                                      "--output", str(output)])
    with caplog.at_level(logging.ERROR, logger="convirt_hf.retrieval"), pytest.raises(SystemExit) as exit_info:
        retrieval_cli.cli()
    assert exit_info.value.code == 1
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "--output" in errors[0].getMessage()
    assert output.read_text() == "{}"
    for bad, message in (
        (["--models", str(tmp_path)], "--models: .* is neither a ConVIRT model folder nor a timm model folder"),
        (["--models", "random:resnet18", "--features", "projection"], "--features projection: random:resnet18 is a "
         "random encoder without a projection head"),
        (["--models", str(model_dir), "--features", "pooled"], "--features must be one of"),
        (["--models", str(model_dir), "--ks", "0"], "--ks must be positive"),
        (["--models", str(model_dir), "--chexpert_csv", str(output)], "needs --retrieval_set_output"),
        (["--models", str(model_dir), "--chexpert_root", str(tmp_path)], "--chexpert_root only applies"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            retrieval_cli.main(bad + ["--output", str(tmp_path / "new.json")])


def test_cli_builds_and_evaluates_a_chexpert_set(model_dir, chexpert_csv, tmp_path):
    from convirt_hf.training import retrieval as retrieval_cli

    set_dir, output = tmp_path / "chexpert-8x3", tmp_path / "chexpert.json"
    result = retrieval_cli.main(["--models", str(model_dir), "--chexpert_csv", str(chexpert_csv),
                                 "--retrieval_set_output", str(set_dir), "--candidates_per_category", "3",
                                 "--queries_per_category", "1", "--ks", "1", "3", "5", "--output", str(output)])
    assert load_retrieval_set(set_dir).text_queries == CHEXPERT_TEXT_QUERIES
    rows = {row["metric"]: row for row in result["results"]}
    assert rows["image->image/P@3"]["value"] is not None and rows["image->image/P@5"]["value"] is None
    assert rows["text->image/P@1/pneumothorax"]["num_candidates"] == 3
    assert rows["text->image/P@1/pneumothorax"]["num_queries"] == 5
    assert result["metadata"]["retrieval_set_info"]["counts"]["selected"]["edema"] == {"candidates": 3, "queries": 1}
    with pytest.raises(ValueError, match="--retrieval_set_output .* exists"):
        retrieval_cli.main(["--models", str(model_dir), "--chexpert_csv", str(chexpert_csv),
                            "--retrieval_set_output", str(set_dir), "--output", str(tmp_path / "again.json")])


def test_embedding_map_paths_per_model():
    from convirt_hf.training.retrieval import embedding_map_paths

    assert embedding_map_paths("out/map.png", ["runs/a"]) == {"runs/a": Path("out/map.png")}
    assert embedding_map_paths("out/map.png", ["runs/a", "runs/b"]) == {
        "runs/a": Path("out/map-a.png"), "runs/b": Path("out/map-b.png")}
    clash = embedding_map_paths("out/map.png", ["x/final", "y/final"])
    assert len(set(clash.values())) == 2


def test_image_to_image_ranks_any_encoder_by_its_own_features(corpus, model_dir, tmp_path):
    """Table 2's rows by one code path: ConVIRT (backbone or projected features) and encoders without a text tower."""
    import timm
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from convirt_hf.evaluation.encoders import load_image_encoder
    from convirt_hf.evaluation.features import encode_splits
    from convirt_hf.evaluation.zero_shot import evaluate_retrieval, load_retrieval_set
    from convirt_hf.training import retrieval as retrieval_cli

    torch.manual_seed(3)
    checkpoint = tmp_path / "ssl-resnet.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in
               timm.create_model("test_resnet", num_classes=0).state_dict().items()}, checkpoint)
    specs = [str(model_dir), "random:test_resnet", str(checkpoint)]
    report = retrieval_cli.main(["--models", *specs, "--architecture", "test_resnet", "--retrieval_set", str(corpus),
                                 "--output", str(tmp_path / "r.json"), "--ks", "5", "10"])
    means = {(row["model"], row["direction"]): row["value"] for row in report["results"]
             if row["category"] == "mean" and row["k"] == 5}
    assert set(means) == {(spec, "image->image") for spec in specs} | {(str(model_dir), "text->image")}
    assert report["metadata"]["baseline_image_size"] == 32  # the ConVIRT model's: every encoder sees the same views

    # the random baseline's row is the brute-force ranking of its backbone features
    retrieval = load_retrieval_set(corpus)
    encoder = load_image_encoder("random:test_resnet", image_size=32)
    # the ConVIRT processor's view: short side 36, centre crop 32
    features = encode_splits(encoder, {"c": retrieval.candidates, "q": retrieval.queries}, eval_mode="resize_crop",
                             progress=False, resize=36)
    similarity = F.normalize(features["q"], dim=-1) @ F.normalize(features["c"], dim=-1).t()
    ranked = similarity.argsort(dim=1, descending=True)[:, :5]
    labels = retrieval.candidate_labels
    expected = sum(sum(labels[j] == query for j in row) / 5
                   for row, query in zip(ranked.tolist(), retrieval.query_labels)) / len(ranked)
    assert means[("random:test_resnet", "image->image")] == pytest.approx(expected)

    # --features projection ranks in the joint space: what pretraining's own retrieval metric reports
    projected = retrieval_cli.main(["--models", str(model_dir), "--features", "projection", "--retrieval_set",
                                    str(corpus), "--output", str(tmp_path / "p.json"), "--ks", "5"])
    value = next(row["value"] for row in projected["results"]
                 if row["direction"] == "image->image" and row["category"] == "mean")
    from convirt_hf import ConvirtModel, ConvirtProcessor

    model = ConvirtModel.from_pretrained(model_dir).eval()
    in_training = evaluate_retrieval(model, ConvirtProcessor.from_pretrained(model_dir), retrieval, ks=(5,))
    assert value == pytest.approx(in_training["image->image"]["mean"][5])
