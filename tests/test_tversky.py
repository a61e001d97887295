"""The Tversky projection (Doumbouya, Jurafsky and Manning, arXiv:2506.11035): hand-computed measures, asymmetry, XOR,
gradients, ConVIRT heads that save, load and serve as remote code, and the Tversky linear-probe head."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from convirt_hf import ConvirtConfig, ConvirtModel
from convirt_hf.evaluation.linear_probe import TverskyHead, fit_tversky_head, run_linear_probe, summarise_runs
from convirt_hf.evaluation.reporting import format_probe_table
from convirt_hf.evaluation.tasks import ClassificationTask
from convirt_hf.modeling.modeling_convirt import (
    TVERSKY_DIFFERENCES,
    TVERSKY_INTERSECTIONS,
    TverskyProjection,
    tversky_difference,
    tversky_intersection,
    tversky_salience,
    tversky_similarity,
)

from helpers import run_clean_python, tiny_config

# With the identity as feature bank, an object's feature measures are its coordinates:
# A = {0, 1} (measures 2, 1), B = {0, 1, 2} (measures 1, 3, 2); feature 3 is in neither.
A = torch.tensor([[2.0, 1.0, -1.0, 0.0]])
B = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
IDENTITY = torch.eye(4)


# --- the measures, by hand -----------------------------------------------------------------------------------------


def test_salience_sums_the_measures_of_present_features():
    assert tversky_salience(A).item() == 3.0 and tversky_salience(B).item() == 6.0


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("product", 2 * 1 + 1 * 3),
        ("min", 1 + 1),
        ("max", 2 + 3),
        ("mean", 1.5 + 2),
        ("gmean", math.sqrt(2) + math.sqrt(3)),
        ("softmin", -math.log(math.exp(-2) + math.exp(-1)) - math.log(math.exp(-1) + math.exp(-3))),
    ],
)
def test_intersection_measures_only_the_shared_features(reduction, expected):
    # features 0 and 1 are shared; feature 2 (only in B) and feature 3 (in neither) must not count
    assert tversky_intersection(A, B, reduction).item() == pytest.approx(expected, rel=1e-6)
    assert tversky_intersection(B, A, reduction).item() == pytest.approx(expected, rel=1e-6)  # Psi is symmetric


def test_differences_by_hand():
    # ignorematch: what one has and the other lacks entirely
    assert tversky_difference(A, B, "ignorematch").item() == 0.0  # everything of A is also in B
    assert tversky_difference(B, A, "ignorematch").item() == 2.0  # feature 2
    # substractmatch: the excess on shared features
    assert tversky_difference(A, B, "substractmatch").item() == 1.0  # feature 0: 2 - 1
    assert tversky_difference(B, A, "substractmatch").item() == 2.0  # feature 1: 3 - 1


def test_contrast_model_is_asymmetric_when_alpha_differs_from_beta():
    def similarity(x, y, alpha, beta, difference="substractmatch"):
        return tversky_similarity(x, y, IDENTITY, alpha, beta, 1.0, "product", difference).item()

    # S = theta f(A n B) - alpha f(A - B) - beta f(B - A) with f(A n B) = 5
    assert similarity(A, B, 0.5, 0.25) == pytest.approx(5 - 0.5 * 1 - 0.25 * 2)  # 4.0
    assert similarity(B, A, 0.5, 0.25) == pytest.approx(5 - 0.5 * 2 - 0.25 * 1)  # 3.75
    assert similarity(A, B, 0.5, 0.5) == pytest.approx(similarity(B, A, 0.5, 0.5)) == pytest.approx(3.5)
    assert similarity(A, B, 0.5, 0.25, "ignorematch") == pytest.approx(5 - 0.25 * 2)
    assert similarity(B, A, 0.5, 0.25, "ignorematch") == pytest.approx(5 - 0.5 * 2)
    # the ratio model: f(A n B) / (f(A n B) + alpha f(A - B) + beta f(B - A))
    ratio = tversky_similarity(A, B, IDENTITY, 0.5, 0.25, similarity="ratio", difference="ignorematch").item()
    assert ratio == pytest.approx(5 / (5 + 0.5 * 0 + 0.25 * 2))
    # two objects with no features at all: 0, not 0 / 0
    nothing = -torch.ones(1, 4)
    assert tversky_similarity(nothing, nothing, IDENTITY, 0.5, 0.5, similarity="ratio").item() == 0.0


def _reference_similarity(x, prototypes, features, alpha, beta, theta, intersection, difference, similarity):
    """The paper's sums over features written as loops over k, indicators and all (eqs. 3-7)."""
    psi = {"product": lambda a, b: a * b, "min": min, "max": max, "mean": lambda a, b: (a + b) / 2,
           "gmean": lambda a, b: math.sqrt(a * b), "softmin": lambda a, b: -math.log(math.exp(-a) + math.exp(-b))}
    output = torch.zeros(len(x), len(prototypes), dtype=torch.float64)
    for i, j in itertools.product(range(len(x)), range(len(prototypes))):
        a = [float(x[i] @ f) for f in features]
        b = [float(prototypes[j] @ f) for f in features]
        common = sum(psi[intersection](ak, bk) for ak, bk in zip(a, b) if ak > 0 and bk > 0)

        def minus(u, v):
            if difference == "ignorematch":
                return sum(uk for uk, vk in zip(u, v) if uk > 0 and vk <= 0)
            return sum(uk - vk for uk, vk in zip(u, v) if uk > 0 and vk > 0 and uk > vk)

        a_only, b_only = minus(a, b), minus(b, a)
        if similarity == "contrast":
            output[i, j] = theta * common - alpha * a_only - beta * b_only
        else:
            output[i, j] = common / max(common + alpha * a_only + beta * b_only, 1e-6)
    return output


@pytest.mark.parametrize("intersection", sorted(TVERSKY_INTERSECTIONS))
@pytest.mark.parametrize("difference", TVERSKY_DIFFERENCES)
def test_layer_is_the_papers_sums(intersection, difference):
    torch.manual_seed(0)
    for similarity in ("contrast", "ratio"):
        layer = TverskyProjection(5, 3, num_features=7, alpha=0.3, beta=0.8, theta=1.5, intersection=intersection,
                                  difference=difference, similarity=similarity).double()
        x = torch.randn(4, 5, dtype=torch.float64)
        with torch.no_grad():
            expected = _reference_similarity(x, layer.prototypes, layer.features, 0.3, 0.8, 1.5, intersection,
                                             difference, similarity)
            torch.testing.assert_close(layer(x), expected)
            # any leading shape, like nn.Linear
            torch.testing.assert_close(layer(x.reshape(2, 2, 5)), expected.reshape(2, 2, 3))


def test_unknown_choices_are_named():
    with pytest.raises(ValueError, match="intersection must be one of"):
        TverskyProjection(4, 2, intersection="median")
    with pytest.raises(ValueError, match="difference must be one of"):
        TverskyProjection(4, 2, difference="symmetric")


# --- learning ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("intersection", sorted(TVERSKY_INTERSECTIONS))
def test_gradients_reach_every_parameter(intersection):
    torch.manual_seed(0)
    for difference, similarity in itertools.product(TVERSKY_DIFFERENCES, ("contrast", "ratio")):
        layer = TverskyProjection(6, 4, num_features=16, alpha=0.5, beta=0.7, intersection=intersection,
                                  difference=difference, similarity=similarity)
        layer(torch.randn(32, 6)).square().mean().backward()
        for name, parameter in layer.named_parameters():
            if similarity == "ratio" and name == "theta":
                assert parameter.grad is None or parameter.grad.abs().sum() == 0  # the ratio model has no theta
                continue
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), (name, difference)
            assert parameter.grad.abs().sum() > 0, (name, difference, similarity)


XOR_INPUTS = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_TARGETS = torch.tensor([0, 1, 1, 0])


def _fit_xor(layer: torch.nn.Module, steps: int = 200, learning_rate: float = 0.05) -> float:
    optimizer = torch.optim.Adam(layer.parameters(), lr=learning_rate)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(layer(XOR_INPUTS), XOR_TARGETS).backward()
        optimizer.step()
    with torch.no_grad():
        return (layer(XOR_INPUTS).argmax(dim=-1) == XOR_TARGETS).float().mean().item()


def test_one_tversky_layer_fits_xor_where_one_linear_layer_cannot():
    # The paper's demonstration: two class prototypes over a small feature bank. (With these settings about three
    # seeds in four converge within 200 steps; seed 0 is one of them.)
    torch.manual_seed(0)
    assert _fit_xor(TverskyProjection(2, 2, num_features=8)) == 1.0
    # The same training cannot make one linear layer right on all four points: XOR is not linearly separable.
    torch.manual_seed(0)
    assert _fit_xor(torch.nn.Linear(2, 2)) <= 0.75


# --- ConVIRT heads -------------------------------------------------------------------------------------------------

TVERSKY_OVERRIDES = dict(projection="tversky", tversky_num_features=8, tversky_alpha=0.3, tversky_beta=0.6,
                         tversky_theta=1.2, tversky_intersection="min", tversky_difference="ignorematch")


def _batch(vocab_size: int, batch_size: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
            "input_ids": torch.randint(5, vocab_size, (batch_size, 9), generator=generator),
            "attention_mask": torch.ones(batch_size, 9, dtype=torch.long)}


@pytest.fixture()
def tversky_model(tokenizer):
    torch.manual_seed(0)
    model = ConvirtModel(tiny_config(vocab_size=tokenizer.vocab_size, **TVERSKY_OVERRIDES)).eval()
    with torch.no_grad():  # move the scalars off their initial values, so that a re-initialisation on load would show
        model.image_projection.alpha.fill_(0.123)
        model.text_projection.theta.fill_(2.5)
    return model


def test_config_fields_validate_and_round_trip(tmp_path):
    config = tiny_config(**TVERSKY_OVERRIDES, tversky_similarity="ratio")
    config.save_pretrained(tmp_path)
    loaded = ConvirtConfig.from_pretrained(tmp_path)
    for field in (*TVERSKY_OVERRIDES, "tversky_similarity"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert ConvirtConfig().tversky_intersection == "product" and ConvirtConfig().tversky_similarity == "contrast"
    for overrides, field in [({"tversky_num_features": 0}, "tversky_num_features"),
                             ({"tversky_num_features": 2.5}, "tversky_num_features"),
                             ({"tversky_alpha": "half"}, "tversky_alpha"),
                             ({"tversky_intersection": "median"}, "tversky_intersection"),
                             ({"tversky_difference": "xor"}, "tversky_difference"),
                             ({"tversky_similarity": "cosine"}, "tversky_similarity")]:
        with pytest.raises(ValueError, match=field):
            tiny_config(projection="tversky", **overrides)


def test_tversky_heads_train_and_save_load_identically(tversky_model, tokenizer, tmp_path):
    model = tversky_model
    assert isinstance(model.image_projection, TverskyProjection)
    assert isinstance(model.text_projection, TverskyProjection)
    assert model.image_projection.prototypes.shape == (16, model.image_encoder.num_features)
    assert model.text_projection.features.shape == (8, 32)
    batch = _batch(tokenizer.vocab_size)

    model.train()
    model(**batch, return_loss=True).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("image_projection.", "text_projection.")):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.zero_grad()
    model.eval()

    with torch.no_grad():
        expected = model(**batch)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert {"image_projection.features", "image_projection.prototypes", "image_projection.alpha",
            "text_projection.beta", "text_projection.theta"} <= set(weights)
    loaded = ConvirtModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.config.projection == "tversky" and loaded.image_projection.intersection == "min"
    assert loaded.image_projection.alpha.item() == pytest.approx(0.123)  # loaded, not re-initialised
    assert loaded.text_projection.theta.item() == 2.5
    saved_state = model.state_dict()
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, saved_state[name], rtol=0, atol=0, msg=name)
    with torch.no_grad():
        actual = loaded(**batch)
    # Same weights, bit for bit (above); the outputs agree to float32 rounding only because loaded tensors sit at
    # other memory alignments (safetensors), and the CPU matmul kernels then sum in another order.
    torch.testing.assert_close(actual.logits_per_image, expected.logits_per_image, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(actual.text_embeds, expected.text_embeds, rtol=1e-6, atol=1e-7)


def test_tversky_model_loads_as_remote_code(tversky_model, tokenizer, tmp_path):
    folder = tmp_path / "saved"
    tversky_model.save_pretrained(folder)
    batch = _batch(tokenizer.vocab_size, batch_size=2, seed=1)
    with torch.no_grad():
        expected = tversky_model(**batch)
    save_file(batch, tmp_path / "inputs.safetensors")
    run_clean_python(
        f"""
        import torch
        from safetensors.torch import load_file, save_file
        from transformers import AutoModel

        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True, dtype=torch.float32).eval()
        assert "convirt_hf" not in type(model).__module__, type(model).__module__
        assert type(model.image_projection).__name__ == "ConvirtTverskyProjection", type(model.image_projection)
        with torch.no_grad():
            outputs = model(**load_file({str(tmp_path / "inputs.safetensors")!r}))
        save_file({{"logits_per_image": outputs.logits_per_image.contiguous()}}, {str(tmp_path / "out.safetensors")!r})
        """,
        hf_home=tmp_path / "clean_hf_home",
        cwd=tmp_path,
    )
    actual = load_file(tmp_path / "out.safetensors")["logits_per_image"]
    torch.testing.assert_close(actual, expected.logits_per_image, rtol=1e-5, atol=1e-6)


# --- the probe head ------------------------------------------------------------------------------------------------


def _clusters(n: int, rng: np.random.Generator, classes=("a", "b", "c")):
    y = rng.integers(0, len(classes), n)
    x = np.eye(len(classes), 16)[y] * 3.0 + rng.normal(size=(n, 16))
    return torch.tensor(x, dtype=torch.float32), [[classes[i]] for i in y], [f"p{i // 2}" for i in range(n)]


FAST_TVERSKY = {"steps": 100}  # the default 32 features; fewer steps than the default 300


def test_tversky_probe_head_learns_and_stays_apart_from_the_linear_one():
    rng = np.random.default_rng(1)
    splits = {"train": _clusters(120, rng), "validation": _clusters(45, rng), "test": _clusters(60, rng)}
    task = ClassificationTask("abc", "multiclass", ["a", "b", "c"])
    weight_decays = (1e-4, 1e-2)
    linear = run_linear_probe(task, splits, fractions=(1.0,), seeds=(0,), weight_decays=weight_decays)
    tversky = run_linear_probe(task, splits, fractions=(1.0,), seeds=(0,), weight_decays=weight_decays,
                               head="tversky", head_options=FAST_TVERSKY)
    assert {row["head"] for row in linear} == {"linear"} and {row["head"] for row in tversky} == {"tversky"}
    accuracy = {row["head"]: row["value"] for row in linear + tversky if row["metric"] == "accuracy"}
    assert accuracy["linear"] > 0.8 and accuracy["tversky"] > 0.7  # chance: 1/3
    # deterministic: the head's initialisation is seeded by the run's seed, not by the global generator
    torch.manual_seed(123)
    again = run_linear_probe(task, splits, fractions=(1.0,), seeds=(0,), weight_decays=weight_decays,
                             head="tversky", head_options=FAST_TVERSKY)
    assert [row["value"] for row in again] == [row["value"] for row in tversky]

    summary = summarise_runs(linear + tversky)
    assert {row["head"] for row in summary if row["metric"] == "accuracy"} == {"linear", "tversky"}
    table = format_probe_table(summary).splitlines()
    assert table[2].startswith("| model | ") and table[3].startswith("| model (tversky head) | ")

    with pytest.raises(ValueError, match="head must be one of"):
        run_linear_probe(task, splits, head="mlp")
    with pytest.raises(ValueError, match="linear head, which takes none"):
        run_linear_probe(task, splits, head_options={"steps": 3})


def test_tversky_probe_head_for_binary_and_multilabel_tasks():
    rng = np.random.default_rng(2)
    x, labels, _ = _clusters(150, rng)
    binary = ClassificationTask("a", "binary", ["a"])
    targets, _ = binary.targets(labels)
    head = fit_tversky_head(x, targets, "binary", 1, weight_decay=1e-4, **FAST_TVERSKY)
    assert isinstance(head, TverskyHead) and head.projection.output_dim == 2  # a present and an absent prototype
    probabilities = head.probabilities(x)
    assert probabilities.shape == (150,) and ((probabilities > 0.5) == targets).mean() > 0.9
    multilabel = ClassificationTask("ab", "multilabel", ["a", "b"])
    targets, _ = multilabel.targets(labels)
    head = fit_tversky_head(x, targets, "multilabel", 2, weight_decay=1e-4, **FAST_TVERSKY)
    assert head.projection.output_dim == 4 and head.probabilities(x).shape == (150, 2)
    assert ((head.probabilities(x) > 0.5) == targets).mean() > 0.9


# --- through the training script -------------------------------------------------------------------------------------


def test_pretrain_trains_tversky_heads_and_writes_a_loadable_folder(tiny_corpus, tmp_path):
    import json

    from helpers import tiny_args
    from training import pretrain

    output_dir = tmp_path / "run"
    metrics = pretrain.main(tiny_args(tiny_corpus, output_dir, retrieval_set="none", projection_dim=16, max_steps=4,
                                      eval_steps=4, save_steps=4, projection="tversky", tversky_num_features=24,
                                      tversky_alpha=0.25, tversky_difference="ignorematch"))
    assert metrics["steps"] == 4 and math.isfinite(metrics["best_validation_loss"])
    model = ConvirtModel.from_pretrained(output_dir)
    assert type(model.image_projection).__name__ == "ConvirtTverskyProjection" and model.config.projection == "tversky"
    assert (model.config.tversky_num_features, model.config.tversky_alpha, model.config.tversky_difference) == (
        24, 0.25, "ignorematch")
    losses = [json.loads(line)["train/loss"] for line in (output_dir / "train_log.jsonl").read_text().splitlines()
              if "train/loss" in line]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
