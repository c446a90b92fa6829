"""The pages in a real browser: headless Chromium drives ``geohf app`` (Predict tab, one Game round)
and opens a ``geohf predict --map`` file; no console error, no request leaves 127.0.0.1.

The browser is Debian's ``chromium`` (``.ci/run`` installs it) driven by Playwright; every request
to anything but 127.0.0.1 / localhost / ``file:`` is aborted and listed. ``GEOHF_SCREENSHOTS=docs``
saves the screenshots to ``docs/`` (``app_predict_browser.png``, ``app_game_browser.png``,
``map_browser.png``); otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest


def chromium_path() -> str | None:
    for candidate in (os.environ.get("GEOHF_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


pytestmark = pytest.mark.skipif(
    chromium_path() is None, reason="Chromium is not installed (apt-get install chromium; .ci/run installs it)"
)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# names the folium page's external scripts define: with those scripts blocked, using them fails
BLOCKED_SCRIPT_NAMES = r"(L|\$|jQuery|d3|bootstrap)"


class Page:
    """A Chromium page that blocks the outside world and keeps every console error and page error."""

    def __init__(self, browser, width: int = 1280, height: int = 1000):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[dict] = []
        self.blocked: list[str] = []
        self.page.route("**/*", self._route)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda err: self.errors.append({"kind": "pageerror", "text": str(err), "url": ""}))

    def _route(self, route):
        url = urlparse(route.request.url)
        if url.scheme in ("data", "blob", "file") or url.hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def _console(self, message):
        if message.type == "error":
            self.errors.append({"kind": "console", "text": message.text, "url": message.location.get("url", "")})

    def unexplained_errors(self) -> list[dict]:
        """Errors not caused by a request this page blocked: a failed load of a blocked URL, or (only when
        a blocked request was a script) a ReferenceError for a name such a script defines."""
        blocked_scripts = any(u.endswith(".js") for u in self.blocked)
        out = []
        for e in self.errors:
            if e["kind"] == "console" and e["url"] in self.blocked and "Failed to load resource" in e["text"]:
                continue
            undefined = re.fullmatch(rf"(ReferenceError: )?{BLOCKED_SCRIPT_NAMES} is not defined", e["text"])
            if blocked_scripts and undefined:
                continue
            out.append(e)
        return out

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        folder = Path(os.environ.get("GEOHF_SCREENSHOTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(folder / name), full_page=True)
        return folder / name


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def tile(tiny_dataset, tmp_path_factory) -> Path:
    from datasets import load_dataset

    path = tmp_path_factory.mktemp("browser") / "tile.png"
    load_dataset(str(tiny_dataset), split="test")[0]["image"].save(path)
    return path


def test_predict_tab_in_a_browser(geohf_app, browser, tile, tmp_path):
    page = Page(browser)
    p = page.page
    p.goto(geohf_app.url, wait_until="load")
    p.get_by_role("button", name="Predict", exact=True).wait_for()
    p.set_input_files("input[type=file]", str(tile))
    p.get_by_text("tile.png").first.wait_for()
    p.get_by_role("button", name="Predict", exact=True).click()
    p.get_by_text(re.compile(r"coordinates -?\d")).first.wait_for(timeout=60_000)
    summary = p.get_by_text(re.compile(r"coordinates -?\d")).first.inner_text()
    assert re.search(r"coordinates -?\d+\.\d{4}, -?\d+\.\d{4}", summary), summary
    assert "50% of the probability within" in summary
    plot = p.get_by_test_id("matplotlib").locator("img").first
    plot.wait_for()  # the matplotlib map arrives as an image
    box = plot.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 100
    countries = p.get_by_test_id("label-output-value").first
    assert countries.inner_text().strip()
    p.wait_for_timeout(500)  # late console messages
    page.screenshot("app_predict_browser.png", tmp_path)
    assert page.unexplained_errors() == [], page.errors
    assert page.blocked == [], f"the app's page asked for outside resources: {page.blocked}"


def test_game_round_in_a_browser(geohf_app, browser, tmp_path):
    page = Page(browser)
    p = page.page
    p.goto(geohf_app.url, wait_until="load")
    p.get_by_role("tab", name="Game: you vs the model").click()
    p.get_by_role("button", name="New round").click()
    p.get_by_text(re.compile(r"^Round \d+: where is this\?")).wait_for(timeout=60_000)
    p.get_by_label("your name (saved with your guesses)").fill("browser")
    world = p.locator("img[src*='world']").first
    world.click(position={"x": 100, "y": 60})  # a click on the map fills latitude and longitude
    latitude = p.get_by_label("latitude")
    p.wait_for_function("el => el.value !== ''", arg=latitude.element_handle(), timeout=30_000)
    lat, lon = float(latitude.input_value()), float(p.get_by_label("longitude").input_value())
    assert -90 <= lat <= 90 and -180 <= lon <= 180 and lat > 0 and lon < 0  # top-left of the map: north-west
    p.get_by_role("button", name="Guess", exact=True).click()
    p.get_by_text("Truth:").wait_for(timeout=60_000)
    table = p.locator("table").filter(has_text="GeoScore").first.inner_text()
    assert "you" in table and "model" in table
    p.get_by_text("this session").wait_for()
    p.wait_for_timeout(500)
    page.screenshot("app_game_browser.png", tmp_path)
    rows = [json.loads(line) for line in geohf_app.results.read_text().splitlines()]
    mine = [r for r in rows if r.get("player") == "browser"]
    assert len(mine) == 1 and mine[0]["player_km"] > 0
    assert page.unexplained_errors() == [], page.errors
    assert page.blocked == [], f"the app's page asked for outside resources: {page.blocked}"


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_predict_map_file_renders_in_a_browser(tiny_model_dir, tile, tmp_path, browser, cli, offline):
    html = tmp_path / "map.html"
    extra = ["--map-offline"] if offline else []
    run = cli("predict", "--model", tiny_model_dir, tile, "--map", html, *extra, "--quiet")
    assert run.code == 0 and html.is_file(), run.err
    page = Page(browser, 1000, 700)
    page.page.goto(html.as_uri(), wait_until="load")
    page.page.wait_for_timeout(1000)
    page.screenshot("map_offline_browser.png" if offline else "map_browser.png", tmp_path)
    assert page.unexplained_errors() == [], page.errors
    if offline:  # self-contained: nothing asked of the network, and no console error at all
        assert page.blocked == [] and page.errors == [], (page.blocked, page.errors)
    if not page.blocked:  # a self-contained map: Leaflet drew it, with the prediction on it
        assert page.page.locator(".leaflet-container").count() == 1
        assert page.page.locator(".leaflet-interactive").count() >= 1
