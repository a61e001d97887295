"""What the demo page computes, without the page: zero-shot classification and gallery retrieval.

[`DemoEngine`] answers each tab's request with plain Python values; `convirt_hf.demo.app` only turns them into Gradio
components. Scores come from the package's evaluation functions (`zero_shot_classify`, `embed_images`,
`embed_texts`), so the page shows exactly what the evaluation scripts measure: cosine similarities of L2-normalised
projections, and probabilities softmax(similarity / tau) with the model's own tau.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inputs import DEFAULT_MAX_MEGAPIXELS, InputError, parse_query, parse_sentences, read_image, thumbnail

DEFAULT_TOP_K = 8
MAX_TOP_K = 50
# Sentences the classification tab starts with: findings of the synthetic corpus, each beside its normal finding.
DEFAULT_SENTENCES = (
    "The cardiac silhouette is enlarged.",
    "The heart size is normal.",
    "There is a large pleural effusion.",
    "No pleural effusion.",
    "There is a pneumothorax.",
    "No pneumothorax.",
)
DEFAULT_QUERY = "The cardiac silhouette is enlarged."


@dataclass
class ClassificationResult:
    """One image against candidate sentences: cosine similarities, similarity / tau, and softmax probabilities."""

    sentences: list[str]
    similarities: list[float]
    probabilities: list[float]
    tau: float

    def label(self) -> dict[str, float]:
        """sentence -> probability (what a `gr.Label` draws as bars)."""
        return dict(zip(self.sentences, self.probabilities))

    def rows(self) -> list[list]:
        """Table rows, most probable first: sentence, cosine similarity, similarity / tau, probability."""
        rows = [[sentence, round(similarity, 4), round(similarity / self.tau, 3), round(probability, 4)]
                for sentence, similarity, probability in zip(self.sentences, self.similarities, self.probabilities)]
        return sorted(rows, key=lambda row: -row[3])


@dataclass
class Match:
    """A gallery image found for a query."""

    rank: int
    name: str
    caption: str
    similarity: float
    row: int  # its row in the gallery index


class DemoEngine:
    """
    Serves the three tabs from a loaded model and an embedded gallery.

    Args:
        demo_model ([`DemoModel`]): the model (`convirt_hf.demo.model.load_demo_model`).
        gallery ([`GalleryIndex`]): the gallery's embeddings (`convirt_hf.demo.gallery.build_gallery_index`).
        top_k (`int`): how many images a search returns unless asked otherwise.
        max_megapixels (`float`): the largest uploaded image read.
    """

    def __init__(self, demo_model, gallery, top_k: int = DEFAULT_TOP_K,
                 max_megapixels: float = DEFAULT_MAX_MEGAPIXELS):
        self.demo_model = demo_model
        self.gallery = gallery
        self.top_k = top_k
        self.max_megapixels = max_megapixels

    def read(self, image):
        """An uploaded image (a path, or bytes) as RGB; [`InputError`] with the reason when it cannot be used."""
        return read_image(image, self.max_megapixels)

    def preview(self, image):
        """The upload as the page shows it (after the same decoding the model sees), or None when nothing is there."""
        return None if image is None else thumbnail(self.read(image), 512)

    def classify(self, image, sentences: str | list[str]) -> ClassificationResult:
        """Zero-shot classification of one image against candidate sentences (a list, or one per line)."""
        from convirt_hf.evaluation.zero_shot import zero_shot_classify

        candidates = parse_sentences(sentences if isinstance(sentences, str) else "\n".join(sentences))
        picture = self.read(image)
        model = self.demo_model
        output = zero_shot_classify(model.model, model.processor, [picture], {s: [s] for s in candidates},
                                    device=model.device, tau=model.tau)
        return ClassificationResult(output.classes, output.similarities[0].tolist(),
                                    output.probabilities[0].tolist(), output.tau)

    def _k(self, k) -> int:
        try:
            value = int(k if k is not None else self.top_k)
        except (TypeError, ValueError) as error:
            raise InputError(f"The number of images to show must be a whole number, got {k!r}.") from error
        if not 1 <= value <= MAX_TOP_K:
            raise InputError(f"The number of images to show must be between 1 and {MAX_TOP_K}, got {value}.")
        return min(value, len(self.gallery))

    def _matches(self, query, k) -> list[Match]:
        return [Match(rank, self.gallery.source.names[self.gallery.positions[row]], self.gallery.caption(row),
                      similarity, row)
                for rank, (row, similarity) in enumerate(self.gallery.top_k(query, self._k(k)), start=1)]

    def text_to_image(self, text: str, k: int | None = None) -> list[Match]:
        """The gallery images closest to a sentence, best first."""
        from convirt_hf.evaluation.zero_shot import embed_texts

        query = parse_query(text)
        k = self._k(k)
        model = self.demo_model
        embedding = embed_texts(model.model, model.processor, [query], model.device)[0]
        return self._matches(embedding, k)

    def image_to_image(self, image, k: int | None = None) -> list[Match]:
        """The gallery images closest to an uploaded image, best first."""
        from convirt_hf.evaluation.zero_shot import embed_images

        k = self._k(k)
        picture = self.read(image)
        model = self.demo_model
        embedding = embed_images(model.model, model.processor, [picture], model.device)[0]
        return self._matches(embedding, k)

    def pictures(self, matches: list[Match]) -> list[tuple]:
        """`(thumbnail, caption)` pairs of matches, for a `gr.Gallery`; the caption carries the similarity."""
        return [(self.gallery.picture(match.row), f"{match.similarity:.3f} · {match.caption}") for match in matches]


def match_rows(matches: list[Match]) -> list[list]:
    """Table rows of matches: rank, image name, caption, cosine similarity."""
    return [[match.rank, match.name, match.caption, round(match.similarity, 4)] for match in matches]
