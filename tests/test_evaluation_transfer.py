"""Transfer evaluation: tasks, nested stratified label fractions, the linear probe, encoders, and the fine-tuning
script."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from convirt_hf.evaluation.encoders import load_image_encoder
from convirt_hf.evaluation.linear_probe import fit_linear_head, run_linear_probe, summarise_runs
from convirt_hf.evaluation.reporting import format_probe_table, write_results
from convirt_hf.evaluation.scoring import patient_level, score_predictions
from convirt_hf.evaluation.tasks import ClassificationTask, fraction_subsets, parse_task, stratified_order

# --- tasks and label fractions ----------------------------------------------------------------------------------


def test_targets_of_each_task_kind(caplog):
    labels = [["pneumonia"], ["edema", "pneumonia"], [], ["no finding"]]
    binary = ClassificationTask("pneumonia", "binary", ["pneumonia"])
    targets, keep = binary.targets(labels)
    assert targets.tolist() == [1, 1, 0, 0] and keep.all()
    multilabel = ClassificationTask("lungs", "multilabel", ["edema", "pneumonia"])
    assert multilabel.targets(labels)[0].tolist() == [[0, 1], [1, 1], [0, 0], [0, 0]]
    multiclass = ClassificationTask("kind", "multiclass", ["pneumonia", "edema", "no finding"])
    with caplog.at_level(logging.WARNING):
        targets, keep = multiclass.targets(labels, split="train")
    assert keep.tolist() == [True, False, False, True] and targets.tolist() == [0, 2]
    assert "2 of 4 rows" in caplog.text and "train" in caplog.text


def test_task_specs_and_their_errors():
    assert parse_task("binary:pneumonia") == ClassificationTask("pneumonia", "binary", ["pneumonia"])
    assert parse_task("mura=binary:abnormal@patient") == ClassificationTask("mura", "binary", ["abnormal"], True)
    chexpert = parse_task("chexpert=multilabel:atelectasis,cardiomegaly,edema")
    assert chexpert.kind == "multilabel" and chexpert.classes == ["atelectasis", "cardiomegaly", "edema"]
    assert parse_task("category").kind == "multiclass" and len(parse_task("category").classes) == 8
    assert parse_task("category").column == "category" and not parse_task("fracture").patient_level
    for spec, message in [("regression:x", "kind"), ("cardiomegal", "preset"), ("binary:a,b", "one"),
                          ("multiclass:a", "at least 2"), ("multilabel:a,a", "distinct")]:
        with pytest.raises(ValueError, match=message):
            parse_task(spec)


def test_label_fractions_are_stratified_seeded_and_nested():
    strata = [0] * 600 + [1] * 300 + [2] * 100
    subsets = fraction_subsets(strata, (0.01, 0.1, 1.0), seed=3)
    assert [len(subsets[f]) for f in (0.01, 0.1, 1.0)] == [10, 100, 1000]
    assert set(subsets[0.01]) <= set(subsets[0.1]) <= set(subsets[1.0])
    counts = Counter(strata[i] for i in subsets[0.1])
    assert counts == {0: 60, 1: 30, 2: 10}  # proportional at every prefix
    small = Counter(strata[i] for i in subsets[0.01])
    assert set(small) == {0, 1, 2} and abs(small[0] - 6) <= 1 and abs(small[1] - 3) <= 1
    again = fraction_subsets(strata, (0.01, 0.1), seed=3)
    other = fraction_subsets(strata, (0.01, 0.1), seed=4)
    assert np.array_equal(again[0.1], subsets[0.1]) and not np.array_equal(other[0.1], subsets[0.1])
    # a fraction smaller than one row per class still holds every class
    assert Counter(strata[i] for i in fraction_subsets(strata, (0.001,), seed=0)[0.001]) == {0: 1, 1: 1, 2: 1}
    with pytest.raises(ValueError, match="fractions"):
        fraction_subsets(strata, (0.0,), seed=0)


def test_every_prefix_of_the_order_is_close_to_stratified():
    strata = [0] * 70 + [1] * 20 + [2] * 10
    order = stratified_order(strata, seed=0, lead_with_each_stratum=False)
    assert sorted(order.tolist()) == list(range(100))
    for prefix in range(10, 101, 10):
        counts = Counter(strata[i] for i in order[:prefix])
        for stratum, share in ((0, 0.7), (1, 0.2), (2, 0.1)):
            assert abs(counts[stratum] - share * prefix) <= 1, (prefix, counts)


# --- scoring and the linear probe --------------------------------------------------------------------------------


def test_patient_level_mean_probability():
    targets = np.array([1, 1, 0, 0, 0])
    probabilities = np.array([0.9, 0.3, 0.2, 0.4, 0.7])
    patient_targets, patient_probabilities = patient_level(targets, probabilities, ["a", "a", "b", "b", None], "binary")
    assert patient_targets.tolist() == [1, 0, 0] and np.allclose(patient_probabilities, [0.6, 0.3, 0.7])
    task = ClassificationTask("x", "binary", ["x"], patient_level=True)
    metrics = score_predictions(task, targets, probabilities, patient_ids=["a", "a", "b", "b", None])
    # per image: positives 0.9, 0.3 against negatives 0.2, 0.4, 0.7: 4 of 6 pairs ordered right
    assert metrics["auc"] == pytest.approx(4 / 6) and metrics["accuracy"] == pytest.approx(3 / 5)
    # per patient: 0.6 against 0.3 and 0.7: 1 of 2
    assert metrics["patient_auc"] == pytest.approx(0.5)


def _clusters(n: int, rng: np.random.Generator, classes=("a", "b", "c"), spread: float = 1.0):
    y = rng.integers(0, len(classes), n)
    centres = np.eye(len(classes), 16) * 3.0
    x = centres[y] + spread * rng.normal(size=(n, 16))
    return torch.tensor(x, dtype=torch.float32), [[classes[i]] for i in y], [f"p{i // 2}" for i in range(n)]


def test_linear_head_separates_separable_data_deterministically():
    rng = np.random.default_rng(0)
    x, labels, _ = _clusters(200, rng, spread=0.1)
    task = ClassificationTask("abc", "multiclass", ["a", "b", "c"])
    targets, _ = task.targets(labels)
    head = fit_linear_head(x, targets, "multiclass", 3, weight_decay=1e-3)
    assert (head.probabilities(x).argmax(axis=1) == targets).all()
    again = fit_linear_head(x, targets, "multiclass", 3, weight_decay=1e-3)
    assert torch.equal(head.weight, again.weight)
    # a stronger penalty shrinks the weights
    assert fit_linear_head(x, targets, "multiclass", 3, weight_decay=1.0).weight.norm() < head.weight.norm()


def test_linear_probe_results_and_summary():
    rng = np.random.default_rng(1)
    splits = {"train": _clusters(300, rng), "validation": _clusters(90, rng), "test": _clusters(150, rng)}
    noise = {name: (torch.randn_like(x), labels, patients) for name, (x, labels, patients) in splits.items()}
    task = ClassificationTask("abc", "multiclass", ["a", "b", "c"])
    results = run_linear_probe(task, splits, fractions=(0.05, 1.0), seeds=(0, 1), model_name="informative")
    results += run_linear_probe(task, noise, fractions=(0.05, 1.0), seeds=(0, 1), model_name="noise")
    row = results[0]
    assert {"model", "data", "task", "task_kind", "protocol", "fraction", "seed", "num_train", "metric", "value",
            "headline"} <= set(row)
    assert {r["num_train"] for r in results if r["fraction"] == 0.05} == {15}
    summary = {(s["model"], s["fraction"], s["metric"]): s for s in summarise_runs(results)}
    assert summary[("informative", 1.0, "accuracy")]["runs"] == 2
    assert summary[("informative", 1.0, "accuracy")]["std"] == 0.0  # the full split is the same for every seed
    assert summary[("informative", 0.05, "accuracy")]["mean"] > 0.8 > 0.5 > summary[("noise", 0.05, "accuracy")]["mean"]
    table = format_probe_table(summarise_runs(results))
    assert table.splitlines()[0] == "| model | abc accuracy 5% | abc accuracy 100% |"
    assert table.splitlines()[2].startswith("| informative | ") and " ± " in table.splitlines()[2]

    binary = ClassificationTask("a", "binary", ["a"], patient_level=True)
    metrics = {r["metric"] for r in run_linear_probe(binary, splits, fractions=(1.0,), seeds=(0,))}
    assert metrics == {"auc", "accuracy", "patient_auc", "patient_accuracy"}
    with pytest.raises(ValueError, match="'test' is missing"):
        run_linear_probe(task, {"train": splits["train"], "validation": splits["validation"]})


def test_results_file_is_written_once_unless_asked(tmp_path):
    path = write_results(tmp_path / "r.json", {"m": 1}, [{"value": 1}], [])
    assert json.loads(path.read_text()) == {"metadata": {"m": 1}, "results": [{"value": 1}], "summary": []}
    with pytest.raises(FileExistsError):
        write_results(path, {}, [], [])
    write_results(path, {"m": 2}, [], [], overwrite=True)
    assert json.loads(path.read_text())["metadata"] == {"m": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


# --- encoders ------------------------------------------------------------------------------------------------------


def test_encoder_specs(model, tmp_path):
    model.eval()
    folder = tmp_path / "convirt"
    model.save_pretrained(folder)
    encoder = load_image_encoder(folder)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder.model(pixels), model.image_encoder(pixels), atol=1e-6)
    assert encoder.kind == "convirt" and encoder.image_size == 32
    assert encoder.num_features == model.image_encoder.num_features

    random_a = load_image_encoder("random:test_resnet", seed=0)
    random_b = load_image_encoder("random:test_resnet", seed=0)
    assert random_a.kind == "random" and all(torch.equal(a, b) for a, b in zip(random_a.model.state_dict().values(),
                                                                                  random_b.model.state_dict().values()))
    # a state dict file of the tower, with a training wrapper's prefix and a classifier, loads into a fresh tower
    state = {f"module.{k}": v for k, v in model.image_encoder.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, model.image_encoder.num_features)
    save_file(state, tmp_path / "tower.safetensors")
    from_file = load_image_encoder(tmp_path / "tower.safetensors", architecture="test_resnet")
    with torch.no_grad():
        assert torch.allclose(from_file.model(pixels), model.image_encoder(pixels), atol=1e-6)
    with pytest.raises(ValueError, match="do not fit 'resnet18'"):
        load_image_encoder(tmp_path / "tower.safetensors", architecture="resnet18")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_encoder(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_image_encoder(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a timm architecture"):
        load_image_encoder("random:no_such_net")
    with pytest.raises(ValueError, match="expected a ConVIRT folder"):
        load_image_encoder("no_such_net")
    assert load_file(tmp_path / "tower.safetensors").keys() == state.keys()  # the file itself is untouched


def test_frozen_encoder_during_head_warm_up_gets_no_gradient_and_keeps_its_statistics():
    from convirt_hf.training.finetune import ImageClassifier

    encoder = load_image_encoder("random:test_resnet").model
    classifier = ImageClassifier(encoder, encoder.num_features, 3, dropout=0.2).train()
    statistics = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}
    classifier.freeze_encoder = True
    classifier(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in classifier.head.parameters())
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in statistics.items())
    classifier.freeze_encoder = False
    classifier.train()
    classifier(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


# --- the command-line scripts, end to end on a tiny synthetic corpus ------------------------------------------------


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory):
    from convirt_hf.data.synthetic import SyntheticCorpusConfig, generate_synthetic_corpus

    config = SyntheticCorpusConfig(seed=0, image_size=32, num_pretrain=8, num_validation=0, num_cls_train=64,
                                   num_cls_val=24, num_cls_test=32, retrieval_candidates_per_category=0,
                                   retrieval_queries_per_category=0)
    return generate_synthetic_corpus(tmp_path_factory.mktemp("corpus") / "synthetic", config)


@pytest.fixture(scope="module")
def convirt_dir(tmp_path_factory, tokenizer):
    from convirt_hf import ConvirtModel

    from helpers import tiny_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("convirt") / "model"
    ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size)).save_pretrained(folder)
    return folder


def test_linear_probe_script(labelled_corpus, convirt_dir, tmp_path, capsys):
    from convirt_hf.training import linear_probe

    output = tmp_path / "probe.json"
    argv = ["--encoders", str(convirt_dir), "random:test_resnet", "--dataset", str(labelled_corpus),
            "--tasks", "category", "pneumonia", "--fractions", "0.1", "1.0", "--seeds", "0", "1",
            "--output", str(output)]
    report = linear_probe.main(argv)
    saved = json.loads(output.read_text())
    assert saved["results"] == report["results"] and saved["metadata"]["protocol"] == "linear_probe"
    models = {row["model"] for row in saved["results"]}
    assert models == {str(convirt_dir), "random:test_resnet"}
    assert {(row["task"], row["fraction"], row["seed"]) for row in saved["results"]} == {
        (task, fraction, seed) for task in ("category", "pneumonia") for fraction in (0.1, 1.0) for seed in (0, 1)}
    headline = {row["metric"] for row in saved["results"] if row["headline"]}
    assert headline == {"accuracy", "auc"}  # category: accuracy; pneumonia: AUC
    table = capsys.readouterr().out
    assert "| category accuracy 10% |" in table and f"| {convirt_dir} |" in table
    with pytest.raises(ValueError, match="--output .* exists"):
        linear_probe.main(argv)
    with pytest.raises(ValueError, match="with kind one of"):
        linear_probe.main(argv[:-2] + ["--output", str(tmp_path / "other.json"), "--tasks", "ordinal:a,b"])


def test_finetune_script(labelled_corpus, tmp_path, caplog):
    from convirt_hf.training import finetune

    output_dir = tmp_path / "ft"
    argv = ["--encoder", "random:test_resnet", "--image_size", "32", "--dataset", str(labelled_corpus),
            "--task", "category", "--fraction", "0.5", "--seeds", "0", "--per_device_batch_size", "8",
            "--head_warmup_steps", "3", "--max_epochs", "3", "--early_stopping_patience", "2",
            "--output_dir", str(output_dir)]
    with caplog.at_level(logging.INFO, logger="convirt_hf.finetune"):
        report = finetune.main(argv)
    assert "head warm-up done after 3 steps" in caplog.text
    rows = {row["metric"]: row for row in report["results"]}
    assert rows["accuracy"]["headline"] and rows["accuracy"]["num_train"] == 32 and 0 <= rows["accuracy"]["value"] <= 1
    assert 1 <= rows["accuracy"]["epochs"] <= 3
    saved = json.loads((output_dir / "results.json").read_text())
    assert saved["metadata"]["protocol"] == "finetune" and saved["results"] == report["results"]
    weights = load_file(output_dir / "classifier_seed0.safetensors")
    assert weights["head.weight"].shape == (8, load_image_encoder("random:test_resnet").num_features)
    with pytest.raises(ValueError, match="--output_dir .* is not empty"):
        finetune.main(argv)
    with pytest.raises(ValueError, match="--fraction must be in"):
        finetune.main(argv + ["--overwrite_output_dir", "--fraction", "0"])


def test_probe_and_fine_tuning_default_to_five_seeds_as_the_papers_means():
    from convirt_hf.training import finetune, linear_probe

    defaults = {cls.__name__: next(f for f in dataclasses.fields(cls) if f.name == "seeds").default_factory()
                for cls in (linear_probe.LinearProbeArguments, finetune.FinetuneArguments)}
    assert defaults == {"LinearProbeArguments": [0, 1, 2, 3, 4], "FinetuneArguments": [0, 1, 2, 3, 4]}
