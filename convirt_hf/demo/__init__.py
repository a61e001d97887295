"""A demo page for any ConVIRT model: zero-shot classification, text-to-image and image-to-image retrieval.

    python -m convirt_hf.demo --model outputs/convirt-demo       # or a Hub id; see docs/demo.md

Modules, one job each:

- `inputs`: uploaded images and candidate sentences, checked and decoded (messages written for the page);
- `model`: a ConVIRT folder or Hub id, checked, loaded, fingerprinted, with its model card's summary;
- `gallery`: the gallery's images and their embeddings, cached as safetensors keyed by model and gallery digests;
- `engine`: what each tab computes, through the package's evaluation functions;
- `app`: the Gradio page and server (the only module that imports gradio, an optional extra: `convirt-hf[demo]`);
- `cli`: the command line; `space`: the folder of a Hugging Face Space that serves a published model.

Importing this package does not import gradio; `create_demo` and `DemoApp` are loaded from `app` on first use.
"""

from __future__ import annotations

__all__ = ["DemoApp", "create_demo"]


def __getattr__(name: str):
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
