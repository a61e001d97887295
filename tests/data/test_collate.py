"""ConvirtCollator pads dynamically and truncates; PairTransform draws views and sentences per row, reproducibly."""

from __future__ import annotations

import string
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from torch.utils.data import DataLoader
from transformers import BertTokenizerFast

from convirt_hf.data.collate import ConvirtCollator, PairTransform
from convirt_hf.data.records import RECORD_FEATURES, make_record
from convirt_hf.data.transforms import ConvirtEvalTransform, ConvirtTrainTransform

WORDS = "the heart is enlarged no pleural effusion lungs are clear mild cardiomegaly small left right".split()


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory) -> BertTokenizerFast:
    """A tiny BERT WordPiece tokenizer written to a temporary vocab.txt (no downloads)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list(string.ascii_lowercase + string.punctuation)
    vocab += [f"##{c}" for c in string.ascii_lowercase]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


def _example(sentence: str, fill: float = 0.0, size: int = 8, **extra) -> dict:
    return {"pixel_values": torch.full((3, size, size), fill), "sentence": sentence, **extra}


def test_pads_to_the_longest_sentence_in_the_batch(wordpiece):
    collator = ConvirtCollator(wordpiece, max_length=32)
    batch = collator([_example("the heart is enlarged", 0.0), _example("no", 1.0), _example("lungs are clear.", 2.0)])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask"}
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]  # rows stay in order
    assert batch["input_ids"].shape == (3, 6)  # [CLS] + 4 words + [SEP], not max_length
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["input_ids"][1].tolist() == [2, wordpiece.convert_tokens_to_ids("no"), 3, 0, 0, 0]
    assert wordpiece.unk_token_id not in batch["input_ids"].tolist()
    alone = collator([_example("no")])
    assert alone["input_ids"].shape == (1, 3)  # another batch, its own length


def test_truncates_at_max_length(wordpiece):
    collator = ConvirtCollator(wordpiece, max_length=6)
    batch = collator([_example("the heart is enlarged " * 10), _example("no")])
    assert batch["input_ids"].shape == (2, 6)
    assert batch["input_ids"][0, -1].item() == wordpiece.sep_token_id  # truncation keeps the closing [SEP]
    assert batch["attention_mask"][0].all()
    # the default cap is 128 tokens, special tokens included
    default = ConvirtCollator(wordpiece)([_example("the heart is enlarged " * 40), _example("no")])
    assert default["input_ids"].shape == (2, 128)


def test_pad_to_multiple_of_and_token_type_ids(wordpiece):
    collator = ConvirtCollator(wordpiece, max_length=16, pad_to_multiple_of=8, return_token_type_ids=True)
    batch = collator([_example("the heart is enlarged"), _example("no")])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["token_type_ids"].shape == (2, 8) and batch["token_type_ids"].sum() == 0
    long = collator([_example("the heart is enlarged " * 10)])
    assert long["input_ids"].shape == (1, 16)  # a multiple of 8, never past max_length
    with pytest.raises(ValueError, match="multiple"):
        ConvirtCollator(wordpiece, max_length=20, pad_to_multiple_of=8)
    assert "token_type_ids" not in ConvirtCollator(wordpiece)([_example("no")])


def test_text_field_ids_and_one_sided_batches(wordpiece):
    collator = ConvirtCollator(wordpiece, text_field="text")
    batch = collator([{"pixel_values": torch.zeros(3, 4, 4), "text": "clear", "id": "a"},
                      {"pixel_values": torch.ones(3, 4, 4), "text": "mild", "id": "b"}])
    assert batch["id"] == ["a", "b"] and batch["input_ids"].shape == (2, 3)
    images_only = collator([{"pixel_values": torch.zeros(3, 4, 4)}, {"pixel_values": np.ones((3, 4, 4))}])
    assert set(images_only) == {"pixel_values"} and images_only["pixel_values"].shape == (2, 3, 4, 4)
    text_only = collator([{"text": "clear"}])
    assert set(text_only) == {"input_ids", "attention_mask"}


def test_bad_batches_fail_clearly(wordpiece):
    collator = ConvirtCollator(wordpiece)
    with pytest.raises(ValueError, match="empty"):
        collator([])
    with pytest.raises(ValueError, match="share a shape"):
        collator([_example("no", size=8), _example("no", size=16)])
    with pytest.raises(ValueError, match="no 'sentence'"):
        collator([_example("no"), {"pixel_values": torch.zeros(3, 8, 8)}])
    with pytest.raises(TypeError, match="must be a string"):
        collator([_example("no"), {"pixel_values": torch.zeros(3, 8, 8), "sentence": 3}])
    with pytest.raises(ValueError, match="neither"):
        collator([{"id": "x"}])


def _records(n: int = 6, size: int = 40, same_image: bool = False) -> Dataset:
    rows = []
    for i in range(n):
        seed = 0 if same_image else i
        pixels = np.random.default_rng(seed).integers(0, 255, (size, size + 6), dtype=np.uint8)
        sentences = [] if i == n - 1 else [f"sentence {i} {k}" for k in range(3)]
        rows.append(make_record(f"r{i}", Image.fromarray(pixels, "L"), text=f"whole text {i}", sentences=sentences))
    return Dataset.from_list(rows, features=RECORD_FEATURES)


def test_pair_transform_on_a_record_dataset(wordpiece):
    records = _records()
    records.set_transform(PairTransform(ConvirtTrainTransform(output_size=32), seed=0))
    row = records[0]
    assert set(row) == {"pixel_values", "sentence", "id"} and row["id"] == "r0"
    assert row["pixel_values"].shape == (3, 32, 32) and row["sentence"] in {f"sentence 0 {k}" for k in range(3)}
    assert records[5]["sentence"] == "whole text 5"  # no sentences: the whole text
    batch = records[0:4]
    assert len(batch["pixel_values"]) == 4 and batch["id"] == ["r0", "r1", "r2", "r3"]
    # each read draws anew: a new view (and, over reads, every sentence)
    assert not torch.equal(records[0]["pixel_values"], records[0]["pixel_values"])
    assert {records[1]["sentence"] for _ in range(40)} == {f"sentence 1 {k}" for k in range(3)}
    loader = DataLoader(records, batch_size=3, collate_fn=ConvirtCollator(wordpiece, max_length=16), drop_last=True)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["pixel_values"].shape == (3, 3, 32, 32)
    assert batches[0]["input_ids"].shape[0] == 3 and batches[1]["id"] == ["r3", "r4", "r5"]


def test_pair_transform_whole_mode_and_eval_views():
    records = _records()
    records.set_transform(PairTransform(ConvirtEvalTransform(resize=36, crop=32), text_mode="whole"))
    first, again = records[2], records[2]
    assert first["sentence"] == "whole text 2"
    torch.testing.assert_close(first["pixel_values"], again["pixel_values"], rtol=0, atol=0)
    assert PairTransform(ConvirtEvalTransform(), text_mode="report").text_mode == "whole"
    with pytest.raises(ValueError, match="text_mode"):
        PairTransform(ConvirtEvalTransform(), text_mode="paragraph")


def test_pair_transform_is_reproducible_and_uniform():
    batch = {"image": [Image.new("L", (40, 40), 100)] * 2, "sentences": [["a", "b", "c", "d"], ["x"]],
             "text": ["t", "u"]}

    def run(seed):
        transform = PairTransform(ConvirtTrainTransform(output_size=16), seed=seed)
        return [transform(batch) for _ in range(3)]

    first, again, other = run(7), run(7), run(8)
    for one, two in zip(first, again):
        assert one["sentence"] == two["sentence"]
        for a, b in zip(one["pixel_values"], two["pixel_values"]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    pairs = [(a, b) for one, two in zip(first, other) for a, b in zip(one["pixel_values"], two["pixel_values"])]
    assert any(not torch.equal(a, b) for a, b in pairs)

    # uniform over the row's sentences (a transform without a generator argument is called plainly)
    transform = PairTransform(lambda image: torch.zeros(3, 2, 2), seed=0)
    counts = Counter(transform(batch)["sentence"][0] for _ in range(4000))
    chi_square = sum((counts[s] - 1000) ** 2 / 1000 for s in "abcd")
    assert set(counts) == set("abcd") and chi_square < 16.3  # 3 degrees of freedom, p = 0.001


def test_pair_transform_reseeds_in_each_worker():
    records = _records(n=4, same_image=True)  # four identical images: only the draws can tell the rows apart
    records.set_transform(PairTransform(ConvirtTrainTransform(output_size=16), seed=0))

    def views():
        torch.manual_seed(0)  # the worker seeds derive from it
        loader = DataLoader(records, batch_size=1, num_workers=2, collate_fn=lambda rows: rows[0])
        return [row["pixel_values"] for row in loader]

    first = views()
    # rows 0 and 1 are each the first row of their worker: a copied generator would give them the same view
    assert not torch.equal(first[0], first[1])
    for a, b in zip(first, views()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # reproducible given the main process's seed


def test_raw_images_are_zero_padded_into_one_batch_with_their_sizes(wordpiece):
    """--gpu_augmentation's batches: decoded images of mixed sizes, padded at the bottom and right, true sizes kept."""
    from convirt_hf.data.gpu_augment import BatchedAugmentation, DecodedImage

    rng = np.random.default_rng(0)
    shapes = [(40, 30), (25, 48), (48, 48), (1, 7)]
    images = [Image.fromarray(rng.integers(1, 256, shape, dtype=np.uint8), "L") for shape in shapes]
    decode = DecodedImage()
    examples = [{"pixel_values": decode(image, generator=torch.Generator()), "sentence": "no", "id": f"r{i}"}
                for i, image in enumerate(images)]
    batch = ConvirtCollator(wordpiece, max_length=16, raw_images=True)(examples)
    assert set(batch) == {"pixel_values", "sizes", "input_ids", "attention_mask", "id"}
    pixels, sizes = batch["pixel_values"], batch["sizes"]
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 1, 48, 48)  # the largest height and width
    assert sizes.dtype == torch.int64 and sizes.tolist() == [list(shape) for shape in shapes]
    for index, (height, width) in enumerate(shapes):
        expected = torch.from_numpy(np.array(images[index]))
        assert torch.equal(pixels[index, 0, :height, :width], expected)  # the image, at the top left
        assert pixels[index, :, height:].sum() == 0 and pixels[index, :, :, width:].sum() == 0  # zeros elsewhere
    assert batch["id"] == ["r0", "r1", "r2", "r3"]
    # the padded batch and its sizes are what BatchedAugmentation takes: each view as if its image were alone
    augment = BatchedAugmentation(output_size=16)
    views = augment(pixels, sizes=sizes, generator=torch.Generator().manual_seed(0))
    params = augment.sample(sizes, torch.Generator().manual_seed(0))
    for index, (height, width) in enumerate(shapes):
        alone = augment(pixels[index : index + 1, :, :height, :width], params=params.to_list()[index : index + 1])
        torch.testing.assert_close(views[index : index + 1], alone, rtol=0, atol=1e-4)  # float precision, normalised


def test_raw_images_of_mixed_channels_and_dtypes(wordpiece):
    collator = ConvirtCollator(wordpiece, raw_images=True)
    gray = torch.full((1, 4, 6), 51, dtype=torch.uint8)
    rgb = torch.stack([torch.full((5, 3), value, dtype=torch.uint8) for value in (0, 102, 255)])
    mixed = collator([{"pixel_values": gray, "sentence": "no"}, {"pixel_values": rgb, "sentence": "no"}])
    assert mixed["pixel_values"].shape == (2, 3, 5, 6) and mixed["pixel_values"].dtype == torch.uint8
    assert (mixed["pixel_values"][0, :, :4, :6] == 51).all()  # grayscale replicated to the three channels
    assert mixed["sizes"].tolist() == [[4, 6], [5, 3]]
    as_float = collator([{"pixel_values": gray, "sentence": "no"},
                         {"pixel_values": torch.full((1, 2, 2), 0.5), "sentence": "no"}])
    assert as_float["pixel_values"].dtype == torch.float32  # any float image: all in [0, 1]
    torch.testing.assert_close(as_float["pixel_values"][0, 0, :4, :6], torch.full((4, 6), 0.2))
    assert as_float["pixel_values"][1, 0, :2, :2].eq(0.5).all() and as_float["pixel_values"][1, :, 2:].eq(0).all()
    with pytest.raises(ValueError, match=r"example 1: raw pixel_values must be a \(C, H, W\) image"):
        collator([{"pixel_values": gray, "sentence": "no"}, {"pixel_values": torch.zeros(4, 4), "sentence": "no"}])
    with pytest.raises(TypeError, match="uint8 or float"):
        collator([{"pixel_values": torch.zeros((1, 4, 4), dtype=torch.int32), "sentence": "no"}])
