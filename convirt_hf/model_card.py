"""Model cards for trained ConVIRT folders, rendered from the Jinja template in ``model_cards/``.

The YAML metadata (library, pipeline tag, tags, base models, license, model-index from the evaluation results) is
built with ``huggingface_hub.ModelCardData``, so the Hub parses it as it parses its own cards.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = "convirt_model_card.md"
TAGS = ["convirt", "contrastive-learning", "medical-imaging", "chest-x-ray", "image-text", "custom_code"]
SYNTHETIC_DATA_DESCRIPTION = (
    "The built-in synthetic corpus of convirt-hf: generated chest-radiograph-like images with templated reports "
    "(FINDINGS and IMPRESSION sections) covering atelectasis, cardiomegaly, edema, fracture, pleural effusion, "
    "pneumonia, pneumothorax and no finding. It demonstrates the method end to end; a model trained on it has "
    "never seen a real radiograph."
)


def template_path() -> Path:
    return Path(str(importlib.resources.files("convirt_hf.model_cards") / TEMPLATE))


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


def eval_results(metrics: dict, dataset_name: str) -> list[EvalResult]:
    results = []
    for direction, result in (metrics.get("retrieval") or {}).items():
        for k, value in result["mean"].items():
            if value is None:
                continue
            results.append(
                EvalResult(
                    task_type="image-feature-extraction",
                    task_name=f"Zero-shot {direction} retrieval",
                    dataset_type=dataset_name,
                    dataset_name=dataset_name,
                    dataset_split="retrieval",
                    metric_type=f"precision_at_{k}",
                    metric_name=f"{direction} Precision@{k}",
                    metric_value=round(100 * value, 2),
                )
            )
    return results


def evaluation_section(metrics: dict) -> str:
    if not metrics.get("retrieval_table"):
        return "No evaluation results were recorded for this model."
    chance = metrics.get("retrieval_chance")
    chance_text = f" A random ranking scores {100 * chance:.1f}." if chance is not None else ""
    return (
        "Zero-shot retrieval on the held-out retrieval set (candidates ranked by cosine similarity, Precision@k in %, "
        "n/a where k exceeds a category's candidates)." + chance_text + "\n\n" + metrics["retrieval_table"]
    )


def write_model_card(output_dir: str | Path, config, arguments: dict, metrics: dict, repo_id: str | None = None) -> Path:
    """Renders README.md into `output_dir` from the model config, the run's arguments and its metrics."""
    output_dir = Path(output_dir)
    synthetic = arguments.get("data", {}).get("dataset") is None
    dataset_name = "convirt-hf synthetic corpus" if synthetic else Path(str(arguments["data"]["dataset"])).name
    model_name = repo_id.split("/")[-1] if repo_id else output_dir.name
    results = eval_results(metrics, dataset_name)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        tags=TAGS,
        base_model=base_models(config) or None,
        license="apache-2.0" if synthetic else "other",
        model_name=model_name,
        eval_results=results or None,
    )
    training = arguments.get("training", {})
    model = arguments.get("model", {})
    hyperparameters = [
        ("image tower", f"{config.image_model_name} (from {config.image_tower_source or 'random initialisation'})"),
        ("text tower", f"BERT, {config.text_config.num_hidden_layers} layers, hidden {config.text_config.hidden_size} "
                       f"(from {config.text_tower_source or 'random initialisation'})"),
        ("projection", f"{config.projection} to {config.projection_dim}"),
        ("tau / lambda", f"{config.tau} / {config.loss_lambda}"),
        ("frozen text layers", f"{config.frozen_text_layers} (+ embeddings)" if config.freeze_text_embeddings
         else str(config.frozen_text_layers)),
        ("batch size", f"{training.get('per_device_batch_size')} per process x {metrics.get('world_size', 1)}"),
        ("optimizer", f"{training.get('optimizer')}, lr {training.get('learning_rate')}, weight decay "
                      f"{training.get('weight_decay')}, schedule {training.get('lr_scheduler')}"),
        ("steps", str(metrics.get("steps"))),
        ("mixed precision", str(training.get("mixed_precision"))),
    ]
    text_description = (
        "one sentence sampled uniformly from the FINDINGS and IMPRESSION sections at each use (the paper's t_u), "
        f"at most {arguments.get('data', {}).get('max_length')} tokens."
        if arguments.get("data", {}).get("text_mode") == "sentence"
        else "the whole FINDINGS + IMPRESSION text."
    )
    limitations = (
        ("Trained only on synthetic images: it demonstrates the pipeline and must not be applied to real "
         "radiographs. " if synthetic else "")
        + "Contrastive models inherit the biases of their paired data (scanner types, patient populations, the "
        "reporting style of one institution) and can associate findings with shortcuts such as support devices or "
        "image markers. Negated sentences ('No pleural effusion.') are harder for the text tower than affirmed ones. "
        "Retrieval and zero-shot scores on one data set do not transfer to another without validation."
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=model_name,
        repo_id=repo_id or f"<your-org>/{model_name}",
        image_model_name=config.image_model_name,
        text_layers=config.text_config.num_hidden_layers,
        projection=config.projection,
        projection_dim=config.projection_dim,
        image_size=config.image_size,
        data_description=SYNTHETIC_DATA_DESCRIPTION if synthetic else f"Image-report pairs from `{dataset_name}`.",
        text_description=text_description,
        hyperparameters=hyperparameters,
        evaluation_section=evaluation_section(metrics),
        limitations=limitations,
        model_args=model,
    )
    path = output_dir / "README.md"
    card.save(path)
    return path
