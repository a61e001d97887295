"""The model a run trains: its text tower (resolved, checked, pooled by measurement), its tokenizer and its towers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

from convirt_hf import ConvirtConfig, ConvirtModel, ConvirtProcessor
from convirt_hf.data.transforms import default_eval_resize
from convirt_hf.modeling.configuration_convirt import check_partial_text_freezing
from convirt_hf.text_towers import (
    SCRATCH,
    corpus_wordpiece_tokenizer,
    pooling_spread,
    resolve_text_tower,
    small_bert_config,
)

from .arguments import DataArguments, ModelArguments

logger = logging.getLogger("convirt_hf.pretrain")


def check_towers(model_args: ModelArguments, data_args: DataArguments):
    """
    Resolves and checks a pretrained text tower before anything is written: its configuration loads (from a folder,
    an installed package, the Hub or the Hub cache), it is a BERT, --frozen_text_layers leaves it layers to train
    (or says all) and it has the positions --max_length needs. Returns the `ResolvedTextTower`, None for a
    from-scratch tower.
    """
    if model_args.text_tower is None:
        return None
    from transformers import AutoConfig

    spec = model_args.text_tower
    try:
        text_tower = resolve_text_tower(spec)
    except (ImportError, ValueError) as error:
        raise type(error)(f"--text_tower: {error}") from error
    try:
        config = AutoConfig.from_pretrained(text_tower.path)
    except Exception as error:  # OSError offline or for a missing repo, ValueError for an unknown model type, ...
        raise ValueError(f"--text_tower {spec!r}: its configuration cannot be loaded ({error})") from error
    if config.model_type != "bert":
        raise ValueError(f"--text_tower {spec!r} is a {config.model_type!r} model, not a BERT-family "
                         "model (model_type 'bert')")
    try:
        check_partial_text_freezing(model_args.frozen_text_layers, config.num_hidden_layers)
    except ValueError as error:  # its message starts with "frozen_text_layers"
        raise ValueError(f"--{error} (--text_tower {spec!r})") from error
    if data_args.max_length > config.max_position_embeddings:
        raise ValueError(f"--max_length ({data_args.max_length}) exceeds the {config.max_position_embeddings} "
                         f"positions of --text_tower {spec!r}")
    return text_tower


def prepare_tokenizer(model_args: ModelArguments, data_args: DataArguments, text_tower, train_records, accelerator,
                      output_dir: Path):
    """
    The text tower's tokenizer; for a from-scratch tower, one built from the training reports by the main process
    and saved in the run folder, so every process, and a resumed run, use the very same ids.
    """
    from transformers import AutoTokenizer

    if text_tower is not None:
        return AutoTokenizer.from_pretrained(text_tower.path)
    saved = output_dir / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer_config.json").is_file():
        sentences = (sentence for row in train_records.select_columns(["sentences", "text"])
                     for sentence in (row["sentences"] or [row["text"]]))
        corpus_wordpiece_tokenizer(sentences, vocab_size=model_args.text_vocab_size,
                                   model_max_length=data_args.max_length).save_pretrained(saved)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(saved)


def distinct_sentences(records, count: int = 256, max_rows: int = 20_000) -> list[str]:
    """Up to `count` different sentences of the first `max_rows` training reports, in corpus order."""
    found: dict[str, None] = {}
    for row in records.select(range(min(len(records), max_rows))).select_columns(["sentences", "text"]):
        for sentence in row["sentences"] or [row["text"]]:
            found.setdefault(sentence, None)
        if len(found) >= count:
            break
    return list(found)[:count]


def choose_text_pooling(model: ConvirtModel, tokenizer, model_args: ModelArguments, data_args: DataArguments,
                        train_records, accelerator) -> dict:
    """
    Measures how alike each pooling makes different training sentences (`pooling_spread`) and, for --text_pooling
    auto, sets the least collapsed one; the main process decides, so every process pools alike.
    """
    from accelerate.utils import broadcast_object_list

    payload: list[dict | None] = [None]
    if accelerator.is_main_process:
        sentences = distinct_sentences(train_records)
        spread = pooling_spread(model.text_encoder, tokenizer, sentences, max_length=data_args.max_length)
        chosen = min(spread, key=spread.get) if model_args.text_pooling == "auto" else model_args.text_pooling
        payload = [{"chosen": chosen, "mean_cosine_between_sentences": spread, "sentences_measured": len(sentences)}]
    decision = broadcast_object_list(payload)[0]
    model.config.text_pooling = decision["chosen"]
    spread = decision["mean_cosine_between_sentences"]
    logger.info("text pooling: %s (%s); mean cosine between the embeddings of %d different training sentences: %s",
                decision["chosen"], "measured" if model_args.text_pooling == "auto" else "--text_pooling",
                decision["sentences_measured"], ", ".join(f"{k} {v:.2f}" for k, v in spread.items()))
    if spread[decision["chosen"]] > min(spread.values()) + 0.2:
        logger.warning("--text_pooling %s makes different sentences much more alike than %s pooling does with this "
                       "tower: its sentence embeddings are collapsed; consider --text_pooling auto",
                       decision["chosen"], min(spread, key=spread.get))
    return decision


def build_model(model_args: ModelArguments, data_args: DataArguments, text_tower, tokenizer
                ) -> tuple[ConvirtProcessor, ConvirtModel]:
    text_config = None
    if text_tower is None:
        text_config = small_bert_config(
            tokenizer.vocab_size,
            hidden_size=model_args.text_hidden_size,
            num_hidden_layers=model_args.text_layers,
            num_attention_heads=max(1, model_args.text_hidden_size // 64),
            intermediate_size=4 * model_args.text_hidden_size,
            max_position_embeddings=max(128, data_args.max_length),
        )
        dropout = cast(float, model_args.text_dropout)  # ModelArguments sets it for the from-scratch tower
        text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = dropout

    config_fields = dict(
        projection=model_args.projection,
        projection_dim=model_args.projection_dim,
        tversky_num_features=model_args.tversky_num_features,
        tversky_alpha=model_args.tversky_alpha,
        tversky_beta=model_args.tversky_beta,
        tversky_difference=model_args.tversky_difference,
        tau=model_args.tau,
        loss_lambda=model_args.loss_lambda,
        # "auto" is decided once the tower is loaded (choose_text_pooling)
        text_pooling="mean" if model_args.text_pooling == "auto" else model_args.text_pooling,
        freeze_text_embeddings=model_args.freeze_text_embeddings,
        frozen_text_layers=model_args.frozen_text_layers,
        image_size=data_args.image_size,
    )
    if text_tower is None:
        model = ConvirtModel(
            ConvirtConfig(image_model_name=model_args.image_model_name, text_config=text_config.to_dict(),
                          **config_fields)
        )
    else:
        model = ConvirtModel.from_pretrained_towers(
            image=model_args.image_tower,
            text=text_tower.path,
            text_tower_source=text_tower.source,
            # a weights file carries no architecture: --image_model_name names it (a timm tag or folder says its own)
            image_model_name=(model_args.image_model_name
                              if model_args.image_tower is None or Path(model_args.image_tower).expanduser().is_file()
                              else None),
            **config_fields,
        )
    eval_resize = data_args.eval_resize or default_eval_resize(data_args.image_size)
    processor = ConvirtProcessor.from_tokenizer(tokenizer, image_size=data_args.image_size, resize_size=eval_resize)
    return processor, model


def text_tower_record(model: ConvirtModel, text_tower, pooling: dict | None) -> dict:
    """What the run used for its text tower (training_args.json's "text_tower", the model card's text-tower row)."""
    config = model.config
    record = {
        "spec": text_tower.spec if text_tower else SCRATCH,
        "source": text_tower.source if text_tower else "trained from scratch",
        "license": text_tower.license if text_tower else None,
        "package": text_tower.package if text_tower else None,
        "num_hidden_layers": config.text_config.num_hidden_layers,
        "hidden_size": config.text_config.hidden_size,
        "vocab_size": config.text_config.vocab_size,
        "frozen_layers": config.num_frozen_text_layers,
        "frozen_embeddings": bool(config.freeze_text_embeddings),
        "pooling": config.text_pooling,
    }
    if pooling is not None:
        record["pooling_measurement"] = pooling
    return record
