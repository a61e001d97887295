"""Model cards for trained ConVIRT folders and exported timm encoders, rendered from the Jinja templates in
``model_cards/``.

The YAML metadata (library, pipeline tag, tags, base models, license, model-index) is built with
``huggingface_hub.ModelCardData`` so that the Hub parses it as it parses its own cards. The model-index comes from two
sources: the retrieval metrics that ``training/pretrain.py`` records in ``metrics.json``, and the evaluation results
files of ``training/linear_probe.py``, ``finetune.py``, ``retrieval.py`` and ``reproduce.py`` (``{"metadata",
"results", "summary"}``), of which the summary means are used. Rendering works offline: nothing here calls
``ModelCard.validate`` or the network.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from convirt_hf.data.transforms import default_eval_resize

logger = logging.getLogger(__name__)

TEMPLATE = "convirt_model_card.md"
TIMM_TEMPLATE = "timm_encoder_card.md"
TAGS = ["convirt", "contrastive-learning", "medical-imaging", "chest-x-ray", "image-text", "custom_code"]
TIMM_TAGS = ["timm", "image-feature-extraction", "convirt", "contrastive-learning", "medical-imaging", "chest-x-ray"]
PAPER_URL = "https://arxiv.org/abs/2010.00747"
SYNTHETIC_DATASET_NAME = "convirt-hf synthetic corpus"
SYNTHETIC_DATA_DESCRIPTION = (
    "The built-in synthetic corpus of convirt-hf: generated chest-radiograph-like images with templated reports "
    "(FINDINGS and IMPRESSION sections) covering atelectasis, cardiomegaly, edema, fracture, pleural effusion, "
    "pneumonia, pneumothorax and no finding. It demonstrates the method end to end; a model trained on it has "
    "never seen a real radiograph."
)
# The Hub's task ids (pipeline tags) for each evaluation protocol: a linear probe or fine-tune scores an image
# classifier built on the encoder; retrieval ranks embeddings; zero-shot classification is the model's own pipeline.
TASK_TYPES = {
    "linear_probe": "image-classification",
    "finetune": "image-classification",
    "retrieval": "image-feature-extraction",
    "zero_shot": "zero-shot-image-classification",
}
PROTOCOL_NAMES = {"linear_probe": "Linear probe", "finetune": "Fine-tuning", "zero_shot": "Zero-shot classification"}
METRIC_TYPES = {"auc": "roc_auc", "patient_auc": "roc_auc", "accuracy": "accuracy", "patient_accuracy": "accuracy"}
METRIC_NAMES = {"auc": "AUC", "patient_auc": "patient-level AUC", "accuracy": "accuracy",
                "patient_accuracy": "patient-level accuracy"}
SUMMARY_KEYS = ("model", "data", "task", "protocol", "fraction", "metric", "headline", "mean", "std", "runs")
# Model-index values keep the results files' scale (0-1) and enough digits to compare, without float noise.
VALUE_DIGITS = 4


def hub_url(repo_id: str, repo_type: str = "model") -> str:
    """A repo's page on the Hub the upload goes to: `HF_ENDPOINT` (a self-hosted Hub), else huggingface.co."""
    from huggingface_hub import constants

    prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[repo_type]
    return f"{constants.ENDPOINT.rstrip('/')}/{prefix}{repo_id}"


def template_path(name: str = TEMPLATE) -> Path:
    return Path(str(importlib.resources.files("convirt_hf.model_cards") / name))


def base_models(config) -> list[str]:
    """Hub ids of the towers the model started from (timm tags become `timm/<tag>`); local files are not listed."""
    found = []
    image_source = config.image_tower_source or ""
    if image_source.startswith("hf-hub:"):
        found.append(image_source[len("hf-hub:") :])
    elif image_source and "." in image_source and "/" not in image_source and not Path(image_source).exists():
        found.append(f"timm/{image_source}")
    text_source = config.text_tower_source or ""
    if text_source and text_source.count("/") == 1 and not Path(text_source).exists():
        found.append(text_source)
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation results files


def read_evaluation_file(path: str | os.PathLike) -> dict:
    """
    Reads an evaluation results file (as written by `convirt_hf.evaluation.reporting.write_results`).

    Args:
        path (`str` or `os.PathLike`): the JSON file.

    Returns:
        `dict` with the file's `metadata`, `results` and `summary`, plus `path` (the file, for error messages).

    Raises:
        `FileNotFoundError` when the file does not exist; `ValueError` when it is not JSON or lacks the
        `metadata`/`summary` structure or a summary row lacks one of the fields the card needs.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file {path} does not exist")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"evaluation file {path} is not valid JSON: {error}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("metadata"), dict) or not isinstance(
        payload.get("summary"), list
    ):
        raise ValueError(
            f"{path} is not an evaluation results file: expected a JSON object with 'metadata', 'results' and "
            "'summary' as written by training/linear_probe.py, finetune.py, retrieval.py or reproduce.py"
        )
    for index, row in enumerate(payload["summary"]):
        missing = [key for key in SUMMARY_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise ValueError(f"{path}: summary row {index} lacks {missing}")
    return {"metadata": payload["metadata"], "results": payload.get("results") or [], "summary": payload["summary"],
            "path": str(path)}


def _same_folder(spec: str, folder: Path) -> bool:
    try:
        return Path(spec).expanduser().resolve() == folder
    except (OSError, ValueError):  # a spec like "random:resnet18" may not be a valid path on every platform
        return False


def select_model(evaluation: dict, model_dir: str | os.PathLike, model: str | None = None) -> str:
    """
    The name under which `model_dir` appears in an evaluation file's rows.

    A file usually compares several encoders (the model and its baselines). The model is the row name given as
    `model`, else the one that resolves to `model_dir`, else the one with `model_dir`'s folder name (the evaluation
    may have run from another working directory). Anything else is ambiguous and raises, so that a baseline's numbers
    never end up on the model's page.
    """
    source = evaluation.get("path", "the evaluation file")
    models = list(dict.fromkeys(row["model"] for row in evaluation["summary"]))
    if not models:
        raise ValueError(f"{source} has no summary rows: there is nothing to put on the model card")
    if model is not None:
        if model not in models:
            raise ValueError(f"{source} has no rows for model {model!r}; its models are {models}")
        return model
    folder = Path(model_dir).expanduser().resolve()
    matches = [name for name in models if _same_folder(name, folder)]
    if not matches:
        matches = [name for name in models if Path(name).name == folder.name]
    if len(matches) != 1:
        raise ValueError(
            f"{source}: cannot tell which of its models {models} is {folder}; pass evaluation_model "
            "(--evaluation_model) with the name the evaluation used"
        )
    return matches[0]


def _dataset_name(data: str | None, fallback: str) -> str:
    if not data:
        return fallback
    name = Path(str(data)).name.split(":")[0]  # zero-shot rows name "<folder>:<split>"
    # The synthetic corpus's cache folder is named after a config hash, which says nothing on a model page.
    return SYNTHETIC_DATASET_NAME if name.startswith("synthetic-") else name


def _split_of(row: dict, metadata: dict) -> str:
    protocol = row["protocol"]
    if protocol == "retrieval":
        return "retrieval"
    if protocol == "zero_shot":
        name = Path(str(row.get("data") or "")).name
        return name.rsplit(":", 1)[1] if ":" in name else "test"
    arguments = metadata.get("arguments") or {}
    if arguments.get("test_split"):
        return arguments["test_split"]
    # the scripts' default test split: the synthetic corpus's is cls_test (convirt_hf.evaluation.corpora)
    return "cls_test" if Path(str(row.get("data") or "")).name.startswith("synthetic-") else "test"


def collect_results(evaluations: Sequence[dict], model_dir: str | os.PathLike, model: str | None = None,
                    ) -> tuple[list[dict], list[dict]]:
    """
    The summary rows of this model and of its linear-probe/fine-tune baselines, from evaluation files read with
    [`read_evaluation_file`].

    Returns:
        `(rows, baselines)`: each row is a summary row with `dataset` (a readable name), `split` and `source` added.
    """
    rows, baselines = [], []
    for evaluation in evaluations:
        name = select_model(evaluation, model_dir, model)
        for row in evaluation["summary"]:
            if row["protocol"] not in TASK_TYPES:
                continue
            entry = {**row, "dataset": _dataset_name(row.get("data"), SYNTHETIC_DATASET_NAME),
                     "split": _split_of(row, evaluation["metadata"]), "source": evaluation.get("path")}
            if row["model"] == name:
                rows.append(entry)
            elif row["protocol"] in ("linear_probe", "finetune"):
                baselines.append(entry)
    return rows, baselines


def pretraining_retrieval_rows(metrics: dict, dataset_name: str) -> list[dict]:
    """`metrics.json`'s retrieval means (written by training/pretrain.py) as summary-shaped rows."""
    rows = []
    for direction, result in (metrics.get("retrieval") or {}).items():
        for k, value in result["mean"].items():
            if value is None:
                continue
            rows.append({"model": "this model", "data": dataset_name, "task": "retrieval", "protocol": "retrieval",
                         "fraction": None, "metric": f"{direction}/P@{k}", "headline": str(k) == "10",
                         "mean": float(value), "std": 0.0, "runs": 1, "dataset": dataset_name, "split": "retrieval",
                         "source": "metrics.json"})
    return rows


def _parse_retrieval_metric(metric: str) -> tuple[str, int] | None:
    parts = metric.split("/")
    if len(parts) != 2 or not parts[1].startswith("P@"):
        return None  # per-category rows ("image->image/P@10/edema") stay out of the model-index
    return parts[0], int(parts[1][2:])


def _p_at_k_metric(metric: str) -> tuple[str, int]:
    """`(direction, k)` of a retrieval metric known to be a P@k one (the rows `_in_model_index` keeps)."""
    return cast(tuple[str, int], _parse_retrieval_metric(metric))


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _in_model_index(row: dict) -> bool:
    if row.get("mean") is None or not math.isfinite(float(row["mean"])):
        return False
    if row["protocol"] == "retrieval":
        return _parse_retrieval_metric(row["metric"]) is not None  # every k: P@k is the paper's reporting set
    return bool(row.get("headline"))


def _dataset_id(name: str) -> str:
    # model-index `dataset.type` should be an id (the Hub links it to hf.co/datasets/<type>): no spaces
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower() or "dataset"


def eval_result(row: dict) -> EvalResult:
    """One model-index entry for a summary row of this model (its task name is set per group by `eval_results`)."""
    protocol = row["protocol"]
    value = round(float(row["mean"]), VALUE_DIGITS)
    common = {"task_type": TASK_TYPES[protocol], "dataset_type": _dataset_id(row["dataset"]),
              "dataset_name": row["dataset"], "dataset_split": row["split"], "metric_value": value}
    if protocol == "retrieval":
        direction, k = _p_at_k_metric(row["metric"])
        return EvalResult(task_name="Zero-shot retrieval", metric_type=f"precision_at_{k}",
                          metric_name=f"{direction} Precision@{k}", **common)
    metric = row["metric"]
    metric_name = f"{row['task']} {METRIC_NAMES.get(metric, metric)}"
    if protocol != "zero_shot":
        metric_name = f"{PROTOCOL_NAMES[protocol]}, {metric_name}, {_percent(row['fraction'])} labels"
        if row.get("runs", 1) > 1:
            metric_name += f", mean of {row['runs']} seeds"
    return EvalResult(task_name=PROTOCOL_NAMES[protocol],
                      metric_type=METRIC_TYPES.get(metric, metric.replace("/", "_")),
                      metric_name=metric_name, **common)


def eval_results(rows: Sequence[dict]) -> list[EvalResult]:
    """
    The model-index entries of this model's rows: headline metrics of linear probe, fine-tune and zero-shot
    classification, and every Precision@k of retrieval, with the summary means as values.

    The Hub groups entries by task type, data set and split, and shows one task name per group: a linear probe and
    a fine-tune on the same test split share a group, so its name lists both and each metric name its protocol.
    """
    results = [eval_result(row) for row in rows if _in_model_index(row)]

    def group(result: EvalResult) -> tuple:  # huggingface_hub's grouping key (EvalResult.unique_identifier)
        return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split,
                result.dataset_revision)

    names: dict[tuple, list[str]] = {}
    for result in results:
        if result.task_name not in names.setdefault(group(result), []):
            names[group(result)].append(result.task_name)
    for result in results:
        result.task_name = " and ".join(names[group(result)])
    return results


# ---------------------------------------------------------------------------------------------------------------------
# The card's evaluation section


def _cell(row: dict | None) -> str:
    if row is None or row.get("mean") is None:
        return "n/a"
    if row.get("runs", 1) > 1:
        return f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}"
    return f"{100 * row['mean']:.1f}"


def _transfer_table(rows: list[dict]) -> str:
    """Task x label fraction of the headline metric, x100, mean ± std over seeds."""
    fractions = sorted({row["fraction"] for row in rows})
    index = {(row["dataset"], row["task"], row["metric"], row["fraction"]): row for row in rows}
    lines = ["| data set | task | metric | " + " | ".join(f"{_percent(f)} labels" for f in fractions) + " |",
             "|" + "---|" * (len(fractions) + 3)]
    for dataset, task, metric in dict.fromkeys((row["dataset"], row["task"], row["metric"]) for row in rows):
        cells = [_cell(index.get((dataset, task, metric, fraction))) for fraction in fractions]
        lines.append(f"| {dataset} | {task} | {METRIC_NAMES.get(metric, metric)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _retrieval_table(rows: list[dict]) -> str:
    parsed = [(row, *_p_at_k_metric(row["metric"])) for row in rows]  # the P@k rows only
    ks = sorted({k for _, _, k in parsed})
    index = {(row["dataset"], direction, k): row for row, direction, k in parsed}
    lines = ["| data set | direction | " + " | ".join(f"P@{k}" for k in ks) + " |", "|" + "---|" * (len(ks) + 2)]
    for dataset, direction in dict.fromkeys((row["dataset"], direction) for row, direction, _ in parsed):
        cells = [_cell(index.get((dataset, direction, k))) for k in ks]
        lines.append(f"| {dataset} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _baseline_table(rows: list[dict], baselines: list[dict], model_name: str) -> str:
    from convirt_hf.evaluation.reporting import format_probe_table

    this = [{**row, "model": model_name} for row in rows]
    return format_probe_table([row for row in this + baselines if row.get("headline")])


def evaluation_section(rows: Sequence[dict], baselines: Sequence[dict] = (), chance: float | None = None,
                       model_name: str = "this model") -> str:
    """
    The markdown body of the card's Evaluation section: linear-probe and fine-tune tables (task x label fraction,
    mean ± std), a comparison with the baselines evaluated in the same files, zero-shot retrieval Precision@k and
    zero-shot classification. Says so explicitly when there are no results.
    """
    rows, baselines = list(rows), list(baselines)
    parts = []
    for protocol, text in (
        ("linear_probe", "Linear probe: the image encoder is frozen and a logistic-regression head is trained on 1%, "
                         "10% or 100% of the training labels, then scored on the test split."),
        ("finetune", "Fine-tuning: the whole image encoder and a new linear head are trained on a share of the "
                     "training labels, then scored on the test split."),
    ):
        headline = [row for row in rows if row["protocol"] == protocol and row.get("headline")]
        if not headline:
            continue
        seeds = max(row.get("runs", 1) for row in headline)
        parts.append(
            f"### {PROTOCOL_NAMES[protocol]}\n\n{text} Values x100"
            + (f", mean ± standard deviation over {seeds} seeds." if seeds > 1 else ".")
            + "\n\n" + _transfer_table(headline)
        )
        others = [row for row in baselines if row["protocol"] == protocol and row.get("headline")]
        if others:
            parts.append(
                f"Baselines evaluated in the same harness ({PROTOCOL_NAMES[protocol].lower()}):\n\n"
                + _baseline_table(headline, others, model_name)
            )
    retrieval = [row for row in rows if row["protocol"] == "retrieval" and _parse_retrieval_metric(row["metric"])]
    if retrieval:
        chance_text = f" A random ranking scores {100 * chance:.1f}." if chance is not None else ""
        parts.append(
            "### Zero-shot retrieval\n\nImage->image and text->image retrieval without training: candidates are ranked "
            "by cosine similarity to each query; Precision@k x100, n/a where k exceeds a category's candidates."
            + chance_text + "\n\n" + _retrieval_table(retrieval)
        )
    zero_shot = [row for row in rows if row["protocol"] == "zero_shot" and "/" not in row["metric"]]
    if zero_shot:
        lines = ["| data set | task | metric | value |", "|---|---|---|---|"]
        lines += [f"| {row['dataset']} | {row['task']} | {METRIC_NAMES.get(row['metric'], row['metric'])} | "
                  f"{_cell(row)} |" for row in zero_shot]
        parts.append("### Zero-shot classification\n\nNo training: each image is scored by its similarity to each "
                     "class's prompt sentences (accuracy: the most similar class); values x100.\n\n" + "\n".join(lines))
    if parts:
        intro = ("Results of the convirt-hf evaluation harness, with no further tuning on the test data. The card's "
                 "model-index metadata carries the headline numbers on a 0-1 scale.")
        return "\n\n".join([intro, *parts])
    return (
        "No evaluation results were recorded for this model. Run `training/linear_probe.py` and "
        "`training/retrieval.py` on it and pass their JSON files to `training/push.py --evaluation` to add them "
        "here and to the model-index."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def _augmentation_text(name: str | None) -> str:
    try:
        from convirt_hf.data.transforms import AUGMENTATION_PRESETS
    except ImportError:  # the card must render even where the data extras are missing
        AUGMENTATION_PRESETS = {}
    ranges = AUGMENTATION_PRESETS.get(name or "")
    if ranges is None:
        return f"augmentation preset `{name}`."
    return (
        f"augmentation preset `{name}`: random crop of {100 * ranges.crop_scale[0]:g}-{100 * ranges.crop_scale[1]:g}% "
        f"of the area, horizontal flip (p = {ranges.flip_probability:g}), affine transform (rotation up to "
        f"{max(abs(a) for a in ranges.rotation):g} degrees, translation up to {100 * max(ranges.translate):g}%, "
        f"scale {ranges.scale[0]:g}-{ranges.scale[1]:g}), brightness and contrast jitter "
        f"{ranges.brightness[0]:g}-{ranges.brightness[1]:g}, Gaussian blur sigma "
        f"{ranges.blur_sigma[0]:g}-{ranges.blur_sigma[1]:g}."
    )


def _eval_resize(output_dir: Path, config, data: dict) -> int:
    try:
        processor = json.loads((output_dir / "processor_config.json").read_text())
        return int(processor["image_processor"]["size"]["shortest_edge"])
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError):
        return int(data.get("eval_resize") or default_eval_resize(config.image_size))


def text_tower_origin(config, text_tower: dict) -> str:
    """Where the text tower's weights came from, with their licence when known (training_args.json's record)."""
    source = text_tower.get("source") or config.text_tower_source or "random initialisation"
    if text_tower.get("spec") == "scratch":
        return "random initialisation: trained from scratch with a vocabulary learned from the training reports"
    origin = f"[{source}]({hub_url(source)})" if source.count("/") == 1 and not Path(source).exists() \
        else f"`{source}`"
    details = []
    if text_tower.get("license"):
        details.append(f"licence {text_tower['license']}")
    if text_tower.get("package"):
        details.append(f"read offline from the PyPI package `{text_tower['package']}`")
    return origin + (f"; {', '.join(details)}" if details else "")


def text_pooling_text(config, text_tower: dict) -> str:
    """The pooling, and the measurement it was chosen by when the run made one."""
    measured = (text_tower.get("pooling_measurement") or {}).get("mean_cosine_between_sentences")
    if not measured:
        return f"{config.text_pooling} pooling"
    values = ", ".join(f"{name} {value:.2f}" for name, value in measured.items())
    return (f"{config.text_pooling} pooling (mean cosine between the embeddings of different training sentences, "
            f"lower is better: {values})")


def _dataset_of_run(arguments: dict) -> tuple[bool, str]:
    dataset = arguments.get("data", {}).get("dataset")
    return dataset is None, SYNTHETIC_DATASET_NAME if dataset is None else Path(str(dataset)).name


def build_model_card(output_dir: str | os.PathLike, config, arguments: dict, metrics: dict, repo_id: str | None = None,
                     *, evaluations: Sequence[dict] = (), evaluation_model: str | None = None,
                     model_dir: str | os.PathLike | None = None, timm_repo_id: str | None = None,
                     license: str | None = None) -> ModelCard:
    r"""
    The model card of a trained ConVIRT folder.

    Args:
        output_dir (`str` or `os.PathLike`): the folder the card is for (its `processor_config.json` is read).
        config ([`ConvirtConfig`]): the model's configuration.
        arguments (`dict`): the run's arguments (`training_args.json`: `model`, `data`, `training`).
        metrics (`dict`): the run's metrics (`metrics.json`; its retrieval means enter the model-index unless an
            evaluation file has retrieval results of its own).
        repo_id (`str`, *optional*): the Hub repo the card is published in (used in the usage examples).
        evaluations (`Sequence[dict]`, *optional*): evaluation files read with [`read_evaluation_file`].
        evaluation_model (`str`, *optional*): the model's name in the evaluation files (see [`select_model`]).
        model_dir (`str` or `os.PathLike`, *optional*): the trained folder the evaluations ran on (default
            `output_dir`).
        timm_repo_id (`str`, *optional*): the Hub repo of the exported image encoder, for the timm example.
        license (`str`, *optional*): the license; default apache-2.0 for the synthetic corpus, else "other" (the
            weights inherit the training data's terms).

    Returns:
        `huggingface_hub.ModelCard`.
    """
    output_dir = Path(output_dir)
    synthetic, dataset_name = _dataset_of_run(arguments)
    model_name = repo_id.split("/")[-1] if repo_id else output_dir.name
    rows, baselines = collect_results(evaluations, model_dir or output_dir, evaluation_model)
    data = arguments.get("data", {})
    rows = _pretraining_rows(metrics, data, dataset_name, rows) + rows
    chance = _chance_rate(metrics, evaluations)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=list(TAGS),
        base_model=base_models(config) or None,
        license=license or ("apache-2.0" if synthetic else "other"),
        model_name=model_name,
        eval_results=eval_results(rows) or None,
    )
    text_tower = arguments.get("text_tower") or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=model_name,
        repo_id=repo_id or f"<your-org>/{model_name}",
        timm_repo_id=timm_repo_id,
        timm_repo_url=hub_url(timm_repo_id) if timm_repo_id else None,
        paper_url=PAPER_URL,
        image_model_name=config.image_model_name,
        text_layers=config.text_config.num_hidden_layers,
        text_pooling=config.text_pooling,
        text_origin=text_tower_origin(config, text_tower),
        projection=config.projection,
        projection_dim=config.projection_dim,
        image_size=config.image_size,
        eval_resize=_eval_resize(output_dir, config, data),
        data_description=SYNTHETIC_DATA_DESCRIPTION if synthetic else f"Image-report pairs from `{dataset_name}`.",
        augmentation_description=_augmentation_text(data.get("augmentation")),
        text_description=_text_description(data),
        hyperparameters=_hyperparameters(config, arguments.get("training", {}), text_tower, metrics),
        evaluation_section=evaluation_section(rows, baselines, chance),
        limitations=_limitations(synthetic),
    )


def _pretraining_rows(metrics: dict, data: dict, dataset_name: str, rows: list[dict]) -> list[dict]:
    """The retrieval rows of `metrics.json`, unless the evaluation files' `rows` have retrieval results."""
    retrieval_set = data.get("retrieval_set")
    pretraining_dataset = _dataset_name(retrieval_set, dataset_name) if retrieval_set else dataset_name
    pretraining_rows = pretraining_retrieval_rows(metrics, pretraining_dataset)
    if pretraining_rows and any(row["protocol"] == "retrieval" for row in rows):
        logger.info("using the evaluation files' retrieval results instead of metrics.json's")
        return []
    return pretraining_rows


def _chance_rate(metrics: dict, evaluations: Sequence[dict]) -> float | None:
    """The retrieval chance rate: the last evaluation file's that states one, else `metrics.json`'s."""
    chance = metrics.get("retrieval_chance")
    for evaluation in evaluations:
        chance = evaluation["metadata"].get("chance_rate", chance)
    return chance


def _hyperparameters(config, training: dict, text_tower: dict, metrics: dict) -> list[tuple[str, str]]:
    """The card's training-setup table: `(name, value)` rows."""
    frozen = config.num_frozen_text_layers
    return [
        ("image tower", f"{config.image_model_name} (from {config.image_tower_source or 'random initialisation'})"),
        ("text tower", f"BERT, {config.text_config.num_hidden_layers} layers, hidden {config.text_config.hidden_size} "
                       f"(from {text_tower_origin(config, text_tower)}), {text_pooling_text(config, text_tower)}"),
        ("projection", f"{config.projection} to {config.projection_dim}"),
        ("tau / lambda", f"{config.tau} / {config.loss_lambda}"),
        ("frozen text layers", f"{frozen} of {config.text_config.num_hidden_layers}"
         + (" + embeddings (run as a fixed feature extractor, without dropout)" if config.freeze_text_embeddings
            else "")),
        ("image size", f"{config.image_size} px"),
        ("batch size", f"{training.get('per_device_batch_size')} per process x {metrics.get('world_size', 1)} "
                       f"process(es) x {training.get('gradient_accumulation_steps', 1)} accumulation step(s)"),
        ("optimizer", f"{training.get('optimizer')}, lr {training.get('learning_rate')}, weight decay "
                      f"{training.get('weight_decay')}, schedule {training.get('lr_scheduler')}"),
        ("steps", f"{metrics.get('steps')} ({metrics.get('samples_seen')} pairs seen)"),
        ("best validation loss", f"{metrics['best_validation_loss']:.4f}"
         if isinstance(metrics.get("best_validation_loss"), (int, float)) else "not recorded"),
        ("mixed precision", str(training.get("mixed_precision"))),
        ("seed", str(training.get("seed"))),
    ]


def _text_description(data: dict) -> str:
    """What the text tower was given in training."""
    if data.get("text_mode") == "sentence":
        return ("one sentence sampled uniformly from the FINDINGS and IMPRESSION sections at each use (the paper's "
                f"t_u), at most {data.get('max_length')} tokens.")
    return f"the whole FINDINGS + IMPRESSION text, at most {data.get('max_length')} tokens."


def _limitations(synthetic: bool) -> str:
    """The card's limitations paragraph."""
    return (
        ("Trained only on synthetic images: it demonstrates the pipeline and must not be applied to real "
         "radiographs. " if synthetic else "")
        + "Contrastive models inherit the biases of their paired data (scanner types, patient populations, the "
        "reporting style of one institution) and can associate findings with shortcuts such as support devices or "
        "image markers. Negated sentences ('No pleural effusion.') are harder for the text tower than affirmed ones. "
        "Retrieval and zero-shot scores on one data set do not transfer to another without validation."
    )


def write_model_card(output_dir: str | os.PathLike, config, arguments: dict, metrics: dict, repo_id: str | None = None,
                     **kwargs) -> Path:
    """
    Renders README.md into `output_dir` (see [`build_model_card`] for the arguments); returns its path.
    """
    path = Path(output_dir) / "README.md"
    build_model_card(output_dir, config, arguments, metrics, repo_id, **kwargs).save(path)
    return path


def write_timm_model_card(output_dir: str | os.PathLike, config, repo_id: str | None = None, *,
                          convirt_repo_id: str | None = None, arguments: dict | None = None,
                          license: str | None = None) -> Path:
    r"""
    Renders the README.md of an exported timm image encoder folder.

    Args:
        output_dir (`str` or `os.PathLike`): the timm folder.
        config ([`ConvirtConfig`]): the configuration of the ConVIRT model the encoder comes from.
        repo_id (`str`, *optional*): the encoder's Hub repo (used in `timm.create_model("hf-hub:...")`).
        convirt_repo_id (`str`, *optional*): the full ConVIRT model's Hub repo, listed as `base_model`.
        arguments (`dict`, *optional*): the run's arguments (for the training data's description and license).
        license (`str`, *optional*): as for [`build_model_card`].

    Returns:
        `Path` of the README.md.
    """
    output_dir = Path(output_dir)
    synthetic, dataset_name = _dataset_of_run(arguments or {})
    model_name = repo_id.split("/")[-1] if repo_id else output_dir.name
    if convirt_repo_id:
        base = [convirt_repo_id]
    else:  # without the ConVIRT repo, the encoder still derives from the image tower it started from
        base = [name for name in base_models(config) if name.startswith("timm/")]
    card_data = ModelCardData(
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        tags=list(TIMM_TAGS),
        base_model=base or None,
        license=license or ("apache-2.0" if synthetic else "other"),
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path(TIMM_TEMPLATE)),
        model_name=model_name,
        repo_id=repo_id or f"<your-org>/{model_name}",
        convirt_repo_id=convirt_repo_id,
        convirt_repo_url=hub_url(convirt_repo_id) if convirt_repo_id else None,
        paper_url=PAPER_URL,
        image_model_name=config.image_model_name,
        image_size=config.image_size,
        data_description=SYNTHETIC_DATA_DESCRIPTION if synthetic else f"Image-report pairs from `{dataset_name}`.",
        synthetic=synthetic,
    )
    path = output_dir / "README.md"
    card.save(path)
    return path
