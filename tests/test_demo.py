"""The demo page: its functions, its server through gradio_client on 127.0.0.1, its gallery cache, and its Space.

Offline by construction: Gradio's telemetry is off, gradio_client runs with HF_HUB_OFFLINE=1, and every temporary
file goes under the test's folders. Expected values are computed here from the model directly (a brute-force ranking,
softmax(similarity / tau)), never through the demo's code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from convirt_hf.data.synthetic import SyntheticCorpusConfig

from demo_helpers import (
    free_port,
    huge_png,
    offline_gradio_env,
    restore_env,
    truncated_png,
    write_dicom,
    write_gallery,
)
from helpers import FakeHfApi

# gradio 6.31 calls pandas options that pandas 3 deprecates: not this project's warnings
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
REPO = "org/convirt-tiny"
SPACE = "org/convirt-tiny-demo"
GALLERY_IMAGES = 16  # write_gallery: 2 per category
UPLOAD_CAP_MB = 0.5


# ------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def gradio_env(tmp_path_factory):
    previous = offline_gradio_env(tmp_path_factory.mktemp("demo-env"))
    yield
    restore_env(previous)


@pytest.fixture(scope="module")
def trained_dir(tiny_corpus, tmp_path_factory) -> Path:
    """A real (tiny) training/pretrain.py output folder: the demo's model, and what push.py publishes."""
    from convirt_hf.training import pretrain

    from helpers import tiny_args

    output_dir = tmp_path_factory.mktemp("run") / "convirt-tiny"
    pretrain.main(tiny_args(tiny_corpus, output_dir, projection_dim=16, max_steps=2, eval_steps=2, save_steps=2))
    return output_dir


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    return write_gallery(tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="module")
def app(trained_dir, gallery_dir, tmp_path_factory):
    from convirt_hf.demo import create_demo

    demo = create_demo(trained_dir, gallery=gallery_dir, cache_dir=tmp_path_factory.mktemp("cache"), progress=False,
                       max_upload_mb=UPLOAD_CAP_MB, strict=True)
    demo.launch(port=free_port(), block=False, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(app, tmp_path_factory):
    from gradio_client import Client

    return Client(app.url, download_files=str(tmp_path_factory.mktemp("downloads")), verbose=False)


@pytest.fixture(scope="module")
def reference(trained_dir, gallery_dir):
    """The model and the readable gallery images' embeddings, computed without the demo's code."""
    from convirt_hf import ConvirtModel, ConvirtProcessor

    model = ConvirtModel.from_pretrained(trained_dir, dtype=torch.float32).eval()
    processor = ConvirtProcessor.from_pretrained(trained_dir)
    paths = sorted(path for path in gallery_dir.glob("*.png") if not path.name.startswith("zz-"))
    with torch.no_grad():
        images = model.get_image_features(processor(images=[str(path) for path in paths])["pixel_values"],
                                          normalize=True)
    return {"model": model, "processor": processor, "names": [path.name for path in paths], "images": images}


def encode_text(reference, sentences) -> torch.Tensor:
    tokens = reference["processor"](text=list(sentences))
    with torch.no_grad():
        return reference["model"].get_text_features(tokens["input_ids"], tokens["attention_mask"], normalize=True)


def encode_image(reference, path) -> torch.Tensor:
    with torch.no_grad():
        return reference["model"].get_image_features(reference["processor"](images=[str(path)])["pixel_values"],
                                                     normalize=True)[0]


def brute_force(reference, query: torch.Tensor, k: int) -> list[str]:
    scores = (reference["images"] @ query).tolist()
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [reference["names"][i] for i in order[:k]]


@pytest.fixture()
def upload(gallery_dir):
    return min(gallery_dir.glob("cardiomegaly-*.png"))


# --------------------------------------------------------------------------------------------- the functions


def test_classification_is_softmax_of_similarity_over_the_model_tau(app, reference, upload):
    sentences = ["The heart is enlarged.", "The lungs are clear.", "No pleural effusion."]
    result = app.engine.classify(str(upload), "\n".join(sentences) + "\n\n")

    image, texts = encode_image(reference, upload), encode_text(reference, sentences)
    similarities = texts @ image
    tau = reference["model"].config.tau
    assert result.sentences == sentences and result.tau == tau
    assert torch.allclose(torch.tensor(result.similarities), similarities, atol=1e-5)
    assert torch.allclose(torch.tensor(result.probabilities), torch.softmax(similarities / tau, dim=0), atol=1e-5)
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-6)
    rows = result.rows()
    assert [row[3] for row in rows] == sorted((row[3] for row in rows), reverse=True)
    assert all(row[2] == pytest.approx(row[1] / tau, abs=2e-3) for row in rows)


def test_retrieval_functions_return_the_brute_force_top_k(app, reference, upload):
    query = "The cardiac silhouette is enlarged."
    matches = app.engine.text_to_image(query, 5)
    assert [match.name for match in matches] == brute_force(reference, encode_text(reference, [query])[0], 5)
    assert [match.rank for match in matches] == [1, 2, 3, 4, 5]
    matches = app.engine.image_to_image(str(upload), 6)
    assert [match.name for match in matches] == brute_force(reference, encode_image(reference, upload), 6)
    assert matches[0].name == upload.name and matches[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert len(app.engine.text_to_image(query, 50)) == GALLERY_IMAGES  # k is capped by the gallery's size


def test_radiograph_formats_are_read_like_the_processor_reads_them(app, tmp_path):
    rng = np.random.default_rng(0)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(rng.integers(0, 4096, (80, 64), dtype=np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    rgba = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    jpeg = tmp_path / "film.jpg"
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8)).save(jpeg)
    paths = [sixteen, rgba, jpeg]
    if _has_pydicom():
        paths.append(write_dicom(tmp_path / "film.dcm", rng.integers(0, 4096, (48, 40))))
        paths.append(write_dicom(tmp_path / "no-suffix", rng.integers(0, 4096, (48, 40))))  # found by its marker
    for path in paths:
        result = app.engine.classify(str(path), "Cardiomegaly.\nNo acute process.")
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-6), path.name
        assert app.engine.preview(str(path)).mode == "RGB"


def _has_pydicom() -> bool:
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.txt").write_text("This is a report, not an image.\n")
    return {"text": folder / "notes.txt", "truncated": truncated_png(folder / "truncated.png"),
            "huge": huge_png(folder / "huge.png")}


BAD_INPUTS = [  # (what, image, sentences, the message's fragment)
    ("a text file", "text", "a\nb", "notes.txt is not a readable image"),
    ("a truncated PNG", "truncated", "a\nb", "truncated.png could not be decoded: the file is truncated or corrupt"),
    ("a 10,000 x 10,000 image", "huge", "a\nb", "huge.png is 10000 x 10000 pixels (100 megapixels)"),
    ("an empty label list", "ok", " \n\n ", "Enter at least two candidate sentences"),
    ("one label", "ok", "Cardiomegaly.", "Enter at least two candidate sentences, one per line (got 1)"),
    ("500 labels", "ok", "\n".join(f"finding {i}" for i in range(500)), "500 candidate sentences: this page compares"),
    ("a repeated label", "ok", "Edema.\nNo edema.\nEdema.", "Sentence 3 repeats sentence 1"),
]


@pytest.mark.parametrize("what, image, sentences, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_refused_with_a_message(app, bad_files, upload, what, image, sentences, message):
    from convirt_hf.demo.inputs import InputError

    path = upload if image == "ok" else bad_files[image]
    with pytest.raises(InputError, match=re.escape(message)):
        app.engine.classify(str(path), sentences)


def test_search_inputs_are_checked(app, upload):
    from convirt_hf.demo.inputs import InputError

    with pytest.raises(InputError, match="Type a sentence"):
        app.engine.text_to_image("   ", 3)
    for k in (0, 51, "many"):
        with pytest.raises(InputError, match="number of images to show"):
            app.engine.image_to_image(str(upload), k)
    with pytest.raises(InputError, match="Upload an image first"):
        app.engine.image_to_image(None, 3)


# ----------------------------------------------------------------------------------------------------- gallery


def test_gallery_skips_and_counts_corrupt_files_and_the_page_shows_them(app):
    index = app.engine.gallery
    assert len(index) == GALLERY_IMAGES
    assert sorted(name for name, _ in index.skipped) == ["zz-notes.png", "zz-truncated.png"]
    status = index.status()
    assert "16 images" in status and "2 unreadable file(s) skipped" in status and "1 file(s) that are not" in status
    import httpx

    config = httpx.get(f"{app.url}config", timeout=30).json()
    shown = [c["props"].get("value") for c in config["components"] if c["props"].get("elem_id") == "gallery-status"]
    assert shown and "2 unreadable file(s) skipped" in shown[0] and "zz-truncated.png" in shown[0]
    summary = [c["props"].get("value") for c in config["components"] if c["props"].get("elem_id") == "model-summary"]
    assert "A ConVIRT model: an image encoder and a text encoder" in summary[0]  # the model card's first paragraph
    assert "Not a medical device" in summary[0]


def test_gallery_embeddings_are_cached_per_model_and_gallery_content(app, gallery_dir, tmp_path, monkeypatch):
    from safetensors import safe_open

    import convirt_hf.evaluation.zero_shot as zero_shot
    from convirt_hf.demo.gallery import FolderGallery, build_gallery_index

    index = app.engine.gallery
    with safe_open(str(index.cache_path), framework="pt") as handle:
        assert handle.get_tensor("embeddings").shape == (GALLERY_IMAGES, 16)
    demo_model = app.engine.demo_model
    assert index.cache_path.name.startswith(f"gallery-{demo_model.digest[:16]}-")

    def refuse(*args, **kwargs):
        raise AssertionError("the image encoder ran although the embeddings are cached")

    monkeypatch.setattr(zero_shot, "embed_images", refuse)
    again = build_gallery_index(demo_model, FolderGallery(gallery_dir), index.cache_path.parent, progress=False)
    assert again.from_cache and again.cache_path == index.cache_path and "read from the cache" in again.status()
    assert torch.equal(again.embeddings, index.embeddings) and again.skipped == index.skipped
    monkeypatch.undo()

    changed = shutil.copytree(gallery_dir, tmp_path / "changed")
    first = min(changed.glob("atelectasis-*.png"))
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(first)
    rebuilt = build_gallery_index(demo_model, FolderGallery(changed), index.cache_path.parent, progress=False)
    assert not rebuilt.from_cache and rebuilt.cache_path != index.cache_path


def test_a_saved_corpus_split_is_a_gallery_and_the_default_is_the_synthetic_retrieval_set(tiny_corpus, tmp_path,
                                                                                         monkeypatch):
    corpus = tiny_corpus
    from convirt_hf.demo import gallery

    split = gallery.open_gallery(corpus)
    assert isinstance(split, gallery.DatasetGallery) and len(split) == 48  # 6 candidates of each of 8 categories
    assert set(split.captions) == set(json.loads((corpus / "text_queries.json").read_text()))
    assert Image.open(__import__("io").BytesIO(split.raw(0))).size == (48, 48)

    cached = tmp_path / f"synthetic-{SyntheticCorpusConfig().digest()}"
    cached.symlink_to(corpus, target_is_directory=True)
    assert gallery.default_gallery(corpus_cache=tmp_path, cache_dir=tmp_path / "demo").folder == corpus.resolve()
    cached.unlink()
    rendered, render = [], gallery.render_synthetic_gallery

    def render_small(folder):  # the 400 images of the real default take seconds: 8 small ones, recorded
        rendered.append(folder)
        return render(folder, 1, SyntheticCorpusConfig(image_size=32))

    monkeypatch.setattr(gallery, "render_synthetic_gallery", render_small)
    default = gallery.default_gallery(corpus_cache=tmp_path, cache_dir=tmp_path / "demo")
    assert len(default) == 8
    assert rendered == [tmp_path / "demo" / f"synthetic-retrieval-{SyntheticCorpusConfig().digest()}"]


# --------------------------------------------------------------------------------------- through gradio_client


def test_the_server_exposes_one_endpoint_per_tab(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == {"/classify", "/text_to_image", "/image_to_image"}


def test_client_classify_probabilities_sum_to_one(client, reference, upload):
    from gradio_client import handle_file

    sentences = ["The heart is enlarged.", "The lungs are clear."]
    label, table = client.predict(handle_file(str(upload)), "\n".join(sentences), api_name="/classify")
    probabilities = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert set(probabilities) == set(sentences) and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    similarities = encode_text(reference, sentences) @ encode_image(reference, upload)
    expected = torch.softmax(similarities / reference["model"].config.tau, dim=0).tolist()
    assert [probabilities[s] for s in sentences] == pytest.approx(expected, abs=1e-5)
    assert table["headers"] == ["sentence", "cosine similarity", "similarity / tau", "probability"]


def test_client_text_to_image_is_the_brute_force_top_k(client, reference):
    query = "Blunting of the costophrenic angle, consistent with pleural effusion."
    gallery, table = client.predict(query, 7, api_name="/text_to_image")
    assert len(gallery) == 7 and all(Path(item["image"]).is_file() for item in gallery)
    assert [row[1] for row in table["data"]] == brute_force(reference, encode_text(reference, [query])[0], 7)
    assert [float(item["caption"].split(" · ")[0]) for item in gallery] == pytest.approx(
        [row[3] for row in table["data"]], abs=1e-3)


def test_client_image_to_image_is_the_brute_force_top_k(client, reference, gallery_dir):
    from gradio_client import handle_file

    path = max(gallery_dir.glob("pneumothorax-*.png"))
    gallery, table = client.predict(handle_file(str(path)), 5, api_name="/image_to_image")
    assert [row[1] for row in table["data"]] == brute_force(reference, encode_image(reference, path), 5)
    assert len(gallery) == 5


@pytest.mark.parametrize("what, image, sentences, message", BAD_INPUTS[:4], ids=[case[0] for case in BAD_INPUTS[:4]])
def test_client_bad_input_gets_the_message_and_the_server_keeps_serving(client, bad_files, upload, what, image,
                                                                       sentences, message):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    path = upload if image == "ok" else bad_files[image]
    with pytest.raises(AppError, match=re.escape(message)) as error:
        client.predict(handle_file(str(path)), sentences, api_name="/classify")
    assert "Traceback" not in str(error.value)
    label, _ = client.predict(handle_file(str(upload)), "Edema.\nNo edema.", api_name="/classify")
    assert len(label["confidences"]) == 2


def test_an_unexpected_failure_is_one_sentence_without_internals(app, client, upload, monkeypatch):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /secret/path")

    monkeypatch.setattr(app.engine, "classify", broken)
    with pytest.raises(AppError, match="Something went wrong while classifying the image") as error:
        client.predict(handle_file(str(upload)), "a\nb", api_name="/classify")
    assert "secret" not in str(error.value)


def test_uploads_over_the_cap_are_refused_by_the_server(app, tmp_path):
    import httpx

    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(int(UPLOAD_CAP_MB * 1024 * 1024) + 4096))
    with open(big, "rb") as stream:
        response = httpx.post(f"{app.url}gradio_api/upload", files={"files": stream}, timeout=30)
    assert response.status_code == 413, response.text


def test_the_page_needs_nothing_from_outside(app):
    import httpx

    html = httpx.get(app.url, timeout=30).text
    sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    outside = [url for url in sources if re.match(r"(https?:)?//", url) and "127.0.0.1" not in url]
    assert sources and not outside, outside


# ------------------------------------------------------------------------------------------ command and model


def test_the_command_serves_the_page(trained_dir, gallery_dir, tmp_path):
    import httpx

    from convirt_hf.demo import cli

    app = cli.main(["--model", str(trained_dir), "--gallery", str(gallery_dir), "--cache_dir", str(tmp_path),
                    "--port", str(free_port()), "--top_k", "3"], block=False)
    try:
        assert app.url.startswith("http://127.0.0.1:") and httpx.get(app.url, timeout=30).status_code == 200
        assert len(app.engine.text_to_image("Cardiomegaly.")) == 3
    finally:
        app.close()


def test_without_model_the_default_folder_is_served_on_this_machine_only(trained_dir, gallery_dir, tmp_path,
                                                                        monkeypatch):
    """No --model: outputs/convirt-demo (what `make pretrain` writes) when it exists; 127.0.0.1 and no public link
    unless asked."""
    from convirt_hf.demo.cli import DemoArguments

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model given and outputs/convirt-demo does not exist"):
        DemoArguments(gallery=str(gallery_dir))
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "convirt-demo").symlink_to(trained_dir, target_is_directory=True)
    arguments = DemoArguments(gallery=str(gallery_dir))
    assert arguments.model == "outputs/convirt-demo"
    assert arguments.host == "127.0.0.1" and arguments.share is False


def test_a_folder_that_is_not_convirt_gets_a_message_page(tmp_path):
    import httpx

    from convirt_hf.demo import create_demo
    from convirt_hf.demo.model import ModelLoadError, check_model_folder, resolve_model

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="model_type 'bert', not 'convirt'"):
        check_model_folder(folder)
    with pytest.raises(ModelLoadError, match="could not download the model org/absent"):
        resolve_model("org/absent")  # offline: the Hub is not reachable
    app = create_demo(folder, gallery=tmp_path, cache_dir=tmp_path / "cache")
    assert app.engine is None
    app.launch(port=free_port(), block=False, quiet=True)
    try:
        config = httpx.get(f"{app.url}config", timeout=30).json()
        texts = [c["props"].get("value") or "" for c in config["components"]]
        assert any("The demo cannot start" in text and "not 'convirt'" in text for text in texts)
    finally:
        app.close()


def test_importing_the_package_does_not_import_gradio():
    code = ("import sys, convirt_hf, convirt_hf.demo, convirt_hf.demo.cli, convirt_hf.demo.space\n"
            "from convirt_hf.training import push\n"
            "assert 'gradio' not in sys.modules, 'gradio was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=240)


# ------------------------------------------------------------------------------------------------------- Space


def test_space_folder_is_complete(tmp_path):
    from convirt_hf import __version__
    from convirt_hf.demo.space import build_space_folder

    folder = build_space_folder(tmp_path / "space", REPO, per_category=1)
    assert {path.name for path in folder.iterdir()} == {"app.py", "requirements.txt", "README.md", "gallery"}
    assert len(list((folder / "gallery").iterdir())) == 8
    metadata = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert metadata["sdk"] == "gradio" and metadata["models"] == [REPO] and metadata["app_file"] == "app.py"
    assert len(metadata["short_description"]) <= 60
    assert f"convirt-hf[demo]=={__version__}" in (folder / "requirements.txt").read_text().splitlines()
    assert repr(REPO) in (folder / "app.py").read_text()
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        build_space_folder(folder, REPO)


def wait_for_page(server: subprocess.Popen, port: int, log: Path, timeout: float = 180) -> str:
    """The page's URL once it answers 200; fails with the server's log if it exits or takes longer than `timeout`."""
    import httpx

    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


@pytest.mark.slow
def test_space_app_imports_and_serves_a_local_model(trained_dir, tmp_path):
    from gradio_client import Client

    from convirt_hf.demo.space import build_space_folder

    folder = build_space_folder(tmp_path / "space", REPO, per_category=1)
    port = free_port()
    env = {**os.environ, "CONVIRT_DEMO_MODEL": str(trained_dir), "CONVIRT_DEMO_CACHE": str(tmp_path / "cache"),
           "GRADIO_SERVER_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "space.log", "w") as log:
        server = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            url = wait_for_page(server, port, tmp_path / "space.log")
            gallery, table = Client(url, download_files=str(tmp_path / "downloads"), verbose=False).predict(
                "Cardiomegaly.", 8, api_name="/text_to_image")
        finally:
            server.terminate()
            server.wait(timeout=30)
    categories = {re.sub(r"-\d+\.png$", "", row[1]) for row in table["data"]}
    assert len(gallery) == 8 and categories == {"atelectasis", "cardiomegaly", "edema", "fracture", "pneumonia",
                                                "pleural-effusion", "pneumothorax", "no-finding"}


def test_push_uploads_the_space_through_the_same_api(trained_dir, tmp_path, monkeypatch):
    from convirt_hf.training import push as push_cli

    monkeypatch.setenv("HF_TOKEN", "hf_plantedFakeToken0123456789abcdefXYZ")
    api = FakeHfApi(tmp_path / "remote")
    result = push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--space_repo_id", SPACE,
                            "--build_dir", str(tmp_path / "build")], api=api)

    assert api.names() == ["create_repo", "repo_info", "upload_folder", "create_repo", "repo_info", "upload_folder"]
    space_calls = [kwargs for _, kwargs in api.calls if kwargs["repo_id"] == SPACE]
    assert space_calls[0]["repo_type"] == "space" and space_calls[0]["space_sdk"] == "gradio"
    assert space_calls[1]["repo_type"] == "space"
    assert all(kwargs["repo_type"] == "model" for _, kwargs in api.calls if kwargs["repo_id"] == REPO)
    remote = api.remote(SPACE)
    assert (remote / "app.py").is_file() and len(list((remote / "gallery").glob("*.png"))) == 32
    assert f"models:\n- {REPO}\n" in (remote / "README.md").read_text()
    assert result["space"]["repo_type"] == "space" and result["space"]["commit_url"].startswith("https://")

    calls = len(api.calls)
    planned = push_cli.main(["--model_dir", str(trained_dir), "--repo_id", REPO, "--space_repo_id", SPACE, "--dry_run",
                             "--build_dir", str(tmp_path / "dry")], api=api)
    assert len(api.calls) == calls and planned["space"]["dry_run"] and planned["space"]["commit_url"] is None
    assert "app.py" in {name for name, _ in planned["space"]["files"]} and (tmp_path / "dry" / "space").is_dir()
