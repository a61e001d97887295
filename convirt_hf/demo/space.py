"""The folder of a Hugging Face Space that serves the demo page of a published ConVIRT model.

`build_space_folder` writes, for a model repo `org/name`:

- `app.py`: loads the model by its Hub id and serves `convirt_hf.demo.create_demo`'s page;
- `requirements.txt`: this package, at the version that built the folder, with its `demo` extra;
- `README.md`: the Space card (`sdk: gradio`, `models: [org/name]`, ...) and what the page does;
- `gallery/`: a few images of the synthetic corpus's retrieval set per category, the page's search gallery.

`training/push.py --space_repo_id` builds it and uploads it through the same `convirt_hf.hub.push` as the model.
Nothing here imports gradio.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from convirt_hf.model_card import hub_url

from .gallery import render_synthetic_gallery

logger = logging.getLogger(__name__)

SPACE_FILES = ("app.py", "requirements.txt", "README.md", "gallery")
DEFAULT_PER_CATEGORY = 4
# The Gradio release the page was built and tested with; the Space runs it (the card's sdk_version).
TESTED_GRADIO = "6.31.0"

APP_TEMPLATE = '''"""The demo page of the ConVIRT model {repo_id}, as a Hugging Face Space.

Built by convirt_hf.demo.space (training/push.py --space_repo_id).

Three tabs: zero-shot classification of an uploaded radiograph against candidate sentences, and text-to-image and
image-to-image retrieval over the images in gallery/. Not a medical device.

Locally: pip install -r requirements.txt && python app.py
(CONVIRT_DEMO_MODEL=<folder or Hub id> serves another model, CONVIRT_DEMO_CACHE=<folder> moves the embedding cache.)
"""

import os
from pathlib import Path

from convirt_hf.demo import create_demo

HERE = Path(__file__).resolve().parent
MODEL = os.environ.get("CONVIRT_DEMO_MODEL", {repo_id!r})
CACHE = os.environ.get("CONVIRT_DEMO_CACHE", "~/.cache/convirt_hf/demo")

app = create_demo(MODEL, gallery=HERE / "gallery", cache_dir=CACHE)
demo = app.blocks  # the name `gradio app.py` looks for

if __name__ == "__main__":
    # Spaces set GRADIO_SERVER_NAME (0.0.0.0) and GRADIO_SERVER_PORT; on a laptop the page stays on 127.0.0.1.
    port = os.environ.get("GRADIO_SERVER_PORT")
    app.launch(host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), port=int(port) if port else None)
'''

CARD_TEMPLATE = """
# ConVIRT demo: {repo_id}

The demo page of the ConVIRT model [{repo_id}]({repo_url}), an image encoder and a text encoder
pretrained so that a radiograph and the sentences of its report land close together
([Zhang et al.](https://arxiv.org/abs/2010.00747)). Three tabs:

1. **Zero-shot classification**: upload a radiograph (PNG, JPEG, 16-bit PNG or DICOM) or pick an example, write
   candidate sentences one per line, and see softmax(similarity / tau) over them beside the similarities.
2. **Text to image**: the gallery images closest to a sentence.
3. **Image to image**: the gallery images closest to an uploaded image.

**Not a medical device.** This page demonstrates a research model; it must not be used for diagnosis, triage or any
other clinical decision, and its scores are not probabilities of disease.

The gallery holds {count} images of the retrieval set of convirt-hf's synthetic corpus ({per_category} per
category): generated chest-radiograph-like pictures, no patient's image.

Run it on your machine: `pip install -r requirements.txt && python app.py` (the page opens on 127.0.0.1).
Built with convirt-hf {version} (`training/push.py --space_repo_id`).
"""


def space_card_metadata(repo_id: str, license: str = "apache-2.0") -> dict:
    """The Space's README metadata: a Gradio Space linked to its model repo."""
    return {
        "title": "ConVIRT demo",
        "emoji": "🩻",
        "colorFrom": "indigo",
        "colorTo": "gray",
        "sdk": "gradio",
        "sdk_version": TESTED_GRADIO,
        "app_file": "app.py",
        "pinned": False,
        "license": license,
        "models": [repo_id],
        "tags": ["convirt", "medical-imaging", "chest-x-ray", "zero-shot-image-classification", "image-retrieval"],
        "short_description": "Zero-shot radiograph classification and retrieval",
    }


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    entries = sorted(path.name for path in out_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists: pass overwrite=True (--overwrite) to rebuild it")
    foreign = [name for name in entries if name not in SPACE_FILES]
    if foreign:
        raise FileExistsError(f"{out_dir} holds files that a Space build does not write ({', '.join(foreign[:8])}): "
                              "refusing to delete it; choose an empty or new build folder")


def build_space_folder(out_dir: str | os.PathLike, repo_id: str, *, per_category: int = DEFAULT_PER_CATEGORY,
                       overwrite: bool = False, license: str | None = None) -> Path:
    r"""
    Builds the folder of a Gradio Space that serves the demo page of the model repo `repo_id`.

    Args:
        out_dir (`str` or `os.PathLike`): the folder to build; must not exist or be empty unless `overwrite`.
        repo_id (`str`): the model repo the Space loads (`namespace/name`).
        per_category (`int`): gallery images per synthetic category (8 categories).
        overwrite (`bool`): replace an earlier build in `out_dir`.
        license (`str`, *optional*): the Space card's license (default apache-2.0, the synthetic images' license).

    Returns:
        `Path` of the built folder.
    """
    from convirt_hf import __version__
    from convirt_hf.hub import check_repo_id

    check_repo_id(repo_id)
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    out_dir = Path(out_dir).expanduser()
    _check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        (partial / "app.py").write_text(APP_TEMPLATE.format(repo_id=repo_id))
        (partial / "requirements.txt").write_text(
            "# The demo page and the model code: convirt-hf at the version that built this Space.\n"
            f"convirt-hf[demo]=={__version__}\n")
        gallery = render_synthetic_gallery(partial / "gallery", per_category)
        (gallery / ".complete").unlink()  # the render's own marker: not part of the Space
        count = len(list(gallery.glob("*.png")))
        metadata = yaml.safe_dump(space_card_metadata(repo_id, license or "apache-2.0"), sort_keys=False,
                                  allow_unicode=True)
        card = CARD_TEMPLATE.format(repo_id=repo_id, repo_url=hub_url(repo_id), count=count, per_category=per_category,
                                    version=__version__)
        (partial / "README.md").write_text(f"---\n{metadata}---\n{card}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)  # a failed build never leaves half a folder under the final name
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("built the Space folder %s for the model %s (%d gallery images)", out_dir, repo_id, count)
    return out_dir
