"""ConvirtConfig: defaults from the paper, JSON round trip, and clear errors naming the bad field."""

import pytest

from convirt_hf import ConvirtConfig, ConvirtModel

from helpers import tiny_config


def test_defaults_are_the_papers():
    config = ConvirtConfig()
    assert config.image_model_name == "resnet50"
    assert config.projection_dim == 512 and config.projection == "mlp"
    assert config.tau == 0.1 and config.loss_lambda == 0.75
    assert config.text_pooling == "max"
    assert config.freeze_text_embeddings and config.frozen_text_layers == "half" and config.num_frozen_text_layers == 6
    assert config.text_config.num_hidden_layers == 12 and config.text_config.hidden_size == 768


def test_round_trip_keeps_every_field(tmp_path):
    config = tiny_config(tau=0.07, loss_lambda=0.5, projection="linear", text_pooling="mean", projection_hidden_dim=24)
    config.save_pretrained(tmp_path)
    loaded = ConvirtConfig.from_pretrained(tmp_path)
    for field in ("image_model_name", "tau", "loss_lambda", "projection", "text_pooling", "projection_hidden_dim",
                  "frozen_text_layers", "projection_dim", "image_size"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert loaded.text_config.hidden_size == 32 and loaded.text_config.num_hidden_layers == 2
    assert loaded.auto_map["AutoModelForZeroShotImageClassification"] == "modeling_convirt.ConvirtModel"
    assert "temperature" not in loaded.to_dict()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": -0.5}, "tau"),
        ({"loss_lambda": 1.5}, "loss_lambda"),
        ({"loss_lambda": -0.1}, "loss_lambda"),
        ({"projection": "transformer"}, "projection"),
        ({"text_pooling": "attention"}, "text_pooling"),
        ({"frozen_text_layers": 3}, "frozen_text_layers"),
        ({"frozen_text_layers": -1}, "frozen_text_layers"),
        ({"projection_dim": 0}, "projection_dim"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_unknown_timm_architecture_is_named():
    config = tiny_config(image_model_name="resnet_does_not_exist")
    with pytest.raises(ValueError, match="resnet_does_not_exist.*image_model_name"):
        ConvirtModel(config)


def test_text_config_must_be_bert():
    with pytest.raises(TypeError, match="BERT"):
        ConvirtConfig(text_config=42)
