"""The demo page driven in headless Chromium (selenium): for tests/test_demo_browser.py and the README's screenshot.

    python tests/demo_browser.py --model /tmp/demo-model --out docs/images/demo.png

starts the page on 127.0.0.1 (gallery: the synthetic retrieval images by default), classifies an example the way the
browser test does, and saves the screenshot. Chromium runs offline: every host but 127.0.0.1 resolves to nothing, so
any outside request fails and shows up in `outside_requests`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAME = "chromedriver"
INSTALL_HINT = ("install the Debian packages chromium and chromium-driver (`make browser`, run as root, does it: "
                "apt-get install -y chromium chromium-driver)")
WAIT = 60  # seconds: a busy 2-core machine can take several to render a result


def find_browser() -> tuple[str, str] | str:
    """`(chromium path, chromedriver path)`, or the reason they cannot be used."""
    browser = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    driver = shutil.which(DRIVER_NAME)
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    if missing:
        return f"{' and '.join(missing)} not found: {INSTALL_HINT}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return browser, driver


def start_browser(browser: str, driver: str, folder: Path, width: int = 1280, height: int = 1000):
    """Headless Chromium whose profile, caches and temporary files stay in `folder`, with no route off the machine."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # root needs --no-sandbox; the resolver rule makes every host but 127.0.0.1 fail at once, visibly
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     f"--user-data-dir={folder / 'profile'}", "--no-first-run", "--disable-background-networking",
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--hide-scrollbars"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    env = {**os.environ, "TMPDIR": str(folder / "tmp"), "XDG_CONFIG_HOME": str(folder / "config"),
           "XDG_CACHE_HOME": str(folder / "cache")}
    for name in ("tmp", "config", "cache"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    # an explicit driver path: Selenium Manager never tries to download one
    return webdriver.Chrome(service=Service(driver, env=env), options=options)


class DemoPage:
    """The demo page in a browser, by the `elem_id`s that `convirt_hf.demo.app` gives its components."""

    def __init__(self, driver, url: str):
        self.driver, self.url = driver, url

    def _wait(self, condition, timeout: float = WAIT):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(condition)

    def _css(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def open(self) -> float:
        """Loads the page; returns the seconds until the classify button can be clicked."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions

        started = time.perf_counter()
        self.driver.get(self.url)
        self._wait(expected_conditions.element_to_be_clickable((By.ID, "classify-button")))
        return time.perf_counter() - started

    def tab(self, tab_id: str) -> None:
        self._wait(lambda _: self._css(f"button[role=tab][data-tab-id={tab_id}]"))[0].click()

    def upload(self, prefix: str, path: Path, preview: bool = True) -> None:
        """Sends a file to a tab's upload; waits for the preview of what the model sees unless `preview` is False."""
        self._wait(lambda _: self._css(f"#{prefix}-upload input[type=file]"))[0].send_keys(str(Path(path).resolve()))
        if preview:
            self._wait(lambda _: self._css(f"#{prefix}-preview img"))

    def write(self, elem_id: str, text: str) -> None:
        box = self._wait(lambda _: self._css(f"#{elem_id} textarea, #{elem_id} input"))[0]
        box.clear()
        box.send_keys(text)

    def click(self, elem_id: str) -> float:
        """Clicks a button; returns the time of the click (for measuring the response)."""
        self._wait(lambda _: self._css(f"#{elem_id}"))[0].click()
        return time.perf_counter()

    def probabilities(self, count: int) -> dict[str, float]:
        """The Label's probabilities (the `meter` values, exact) once `count` bars are shown."""
        meters = self._wait(lambda _: (found := self._css("#classify-probabilities meter")) and len(found) == count
                            and found)
        return {meter.get_attribute("aria-label"): float(meter.get_attribute("value")) for meter in meters}

    def gallery(self, prefix: str, count: int) -> list[str]:
        """The captions of a tab's result images once `count` of them have loaded (they load lazily)."""
        def loaded(_):
            images = self._css(f"#{prefix}-gallery .gallery-item img")
            ready = [image for image in images
                     if self.driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)]
            return len(ready) == count and ready

        return [image.get_attribute("alt") for image in self._wait(loaded)]

    def toast(self) -> str:
        """The text of the first error message shown."""
        return self._wait(lambda _: (found := self._css("[data-testid=toast-text]")) and found[0].text.strip()
                          and found)[0].text

    def outside_requests(self) -> list[str]:
        """Every network URL (http, https, ws, wss) requested since the last call that is not on 127.0.0.1."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                # chrome:// and data: URLs are the browser's own pages and inline content, not the network
                if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname != "127.0.0.1":
                    urls.append(url)
        return urls

    def screenshot(self, path: Path, max_bytes: int = 300_000) -> Path:
        """A PNG of the window, reduced to a palette when the full-colour file would exceed `max_bytes`."""
        image = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
        if path.stat().st_size > max_bytes:
            image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        return path


def classify(page: DemoPage, image: Path, sentences: list[str]) -> tuple[dict[str, float], float]:
    """Uploads an image, enters the sentences, clicks Classify; returns the probabilities and click-to-result time."""
    page.tab("classify")
    page.upload("classify", image)
    page.write("classify-sentences", "\n".join(sentences))
    clicked = page.click("classify-button")
    probabilities = page.probabilities(len(sentences))
    return probabilities, time.perf_counter() - clicked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a ConVIRT folder")
    parser.add_argument("--gallery", default=None, help="default: the synthetic retrieval images")
    parser.add_argument("--cache_dir", default="~/.cache/convirt_hf/demo")
    parser.add_argument("--out", default="docs/images/demo.png")
    args = parser.parse_args(argv)
    found = find_browser()
    if isinstance(found, str):
        sys.exit(found)
    from convirt_hf.demo import create_demo

    app = create_demo(args.model, gallery=args.gallery, cache_dir=args.cache_dir, strict=True)
    app.launch(block=False, quiet=True)
    profile = tempfile.TemporaryDirectory(prefix="convirt-demo-browser-")
    driver = start_browser(*found, Path(profile.name), height=900)
    try:
        page = DemoPage(driver, app.url)
        print(f"page ready in {page.open():.2f} s")
        example = Path(app.allowed_paths[0]) / sorted(os.listdir(app.allowed_paths[0]))[1]
        sentences = ["The cardiac silhouette is enlarged.", "The heart size is normal.", "No pleural effusion.",
                     "There is a large pleural effusion."]
        probabilities, seconds = classify(page, example, sentences)
        print(f"click to result {seconds:.2f} s: {probabilities}")
        print(f"wrote {page.screenshot(Path(args.out))}; outside requests: {page.outside_requests()}")
    finally:
        driver.quit()
        app.close()
        profile.cleanup()


if __name__ == "__main__":
    main()
