"""Text towers that need no download: a WordPiece tokenizer learned from a corpus and a small BERT configuration.

The offline demo pretrains on the synthetic corpus with a 2-layer BERT trained from scratch and a tokenizer built
from the corpus's own reports: both are seconds to build, need no network and no extra package, and keep a 2-core
CPU run within minutes. Real users start from a pretrained BERT (the paper: ClinicalBERT) with
``ConvirtModel.from_pretrained_towers``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerBase

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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
            json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": model_max_length})
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
        raise ValueError(f"vocab_size={vocab_size} is smaller than the corpus's {len(vocab)} characters and special tokens")
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
