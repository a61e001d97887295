"""The demo page in a real browser: headless Chromium driven by selenium against the server on 127.0.0.1.

Chromium and chromedriver come from Debian's packages (`make test` installs them when it runs as root with apt-get);
where they are missing the tests are skipped, with the reason in the summary and as a warning. The page must work
offline: Chromium resolves no host but 127.0.0.1, and the test fails on any request that leaves the machine.
"""

from __future__ import annotations

import warnings

import pytest

from demo_browser import DemoPage, classify, find_browser, start_browser
from demo_helpers import free_port, offline_gradio_env, restore_env, save_demo_model, write_gallery

# gradio 6.31 calls pandas options that pandas 3 deprecates: not this project's warnings
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")]
TOP_K = 6


@pytest.fixture(scope="module", autouse=True)
def gradio_env(tmp_path_factory):
    previous = offline_gradio_env(tmp_path_factory.mktemp("browser-env"))
    yield
    restore_env(previous)


@pytest.fixture(scope="module")
def browser_paths():
    found = find_browser()
    if isinstance(found, str):
        warnings.warn(f"THE BROWSER TESTS OF THE DEMO PAGE DID NOT RUN: {found}", stacklevel=1)
        pytest.skip(f"browser tests of the demo page not run: {found}")
    return found


@pytest.fixture(scope="module")
def app(browser_paths, tmp_path_factory):
    from convirt_hf.demo import create_demo

    folder = tmp_path_factory.mktemp("browser-demo")
    model = save_demo_model(folder / "model")
    gallery = write_gallery(folder / "gallery")
    demo = create_demo(model, gallery=gallery, cache_dir=folder / "cache", top_k=TOP_K, progress=False, strict=True)
    demo.launch(port=free_port(), block=False, quiet=True)
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def page(app, browser_paths, tmp_path_factory):
    driver = start_browser(*browser_paths, tmp_path_factory.mktemp("chromium"))
    yield DemoPage(driver, app.url)
    driver.quit()


def test_classification_and_text_search_in_the_browser(app, page, tmp_path):
    page.open()
    image = app.engine.gallery.source.raw(app.engine.gallery.positions[1])
    sentences = ["The cardiac silhouette is enlarged.", "No pleural effusion."]
    probabilities, _ = classify(page, image, sentences)

    expected = app.engine.classify(str(image), sentences).label()
    assert set(probabilities) == set(sentences)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert all(probabilities[s] == pytest.approx(expected[s], abs=1e-4) for s in sentences)
    assert page.screenshot(tmp_path / "classify.png").stat().st_size > 10_000

    page.tab("text-to-image")
    page.write("t2i-query", "Blunting of the costophrenic angle.")
    page.click("t2i-button")
    captions = page.gallery("t2i", TOP_K)
    matches = app.engine.text_to_image("Blunting of the costophrenic angle.", TOP_K)
    assert captions == [f"{match.similarity:.3f} · {match.caption}" for match in matches]
    page.screenshot(tmp_path / "text-to-image.png")
    assert page.outside_requests() == []


def test_a_text_file_uploaded_as_an_image_shows_the_message(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("FINDINGS: none. This is a report, not an image.\n")
    page.open()
    page.upload("classify", notes, preview=False)
    assert "notes.txt is not a readable image" in page.toast()
    page.click("classify-button")
    assert "notes.txt is not a readable image" in page.toast()
    page.screenshot(tmp_path / "bad-input.png")
    assert page.outside_requests() == []
