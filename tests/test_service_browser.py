"""The service's web page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
upload a Corridor query, see its correct map image first, with thumbnails and the map of positions.

Set VPRKIT_SCREENSHOT_DIR to keep the screenshot (docs/img/service-page.png was made that way)."""

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from service_server import MAP_FRAMES, Server, build_index, map_name, query  # noqa: E402

from vprkit.service.auth import add_key  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_upload_a_query_and_see_its_match_first(tmp_path):
    idx = build_index(tmp_path)
    keys = tmp_path / "keys.json"
    key = add_key(keys, "browser", ["read"])
    server = Server(idx, keys)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server.url + "/")
            page.fill("#key", key)
            page.dispatch_event("#key", "change")
            page.set_input_files("#file", str(query(10)))
            page.wait_for_selector("#status:has-text('done')", timeout=60_000)
            first = page.locator(".match.first")
            assert first.get_attribute("data-name") == map_name(10)
            assert page.locator(".match").count() == 5
            widths = page.eval_on_selector_all(".match img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
            assert all(w == 160 for w in widths)  # every thumbnail was fetched with the key and decoded
            assert page.locator("#map circle").count() == len(MAP_FRAMES) + 5 + 1  # map, matches, estimate
            assert map_name(10) in page.inner_text("#estimate")
            shot = Path(os.environ.get("VPRKIT_SCREENSHOT_DIR", tmp_path)) / "service-page.png"
            page.screenshot(path=str(shot), full_page=True)
            page.fill("#key", "wrong")
            page.dispatch_event("#key", "change")
            page.set_input_files("#file", str(query(20)))
            page.wait_for_selector("#status.error", timeout=60_000)
            assert "401" in page.inner_text("#status")
            browser.close()
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_printed_url_gives_the_page_its_token_and_a_foreign_page_cannot_write(tmp_path):
    """No keys: the URL printed at start carries the token in its fragment; the page keeps it (and drops it
    from the address bar). A page of another origin posting a form to the map is refused."""
    idx = build_index(tmp_path)
    server = Server(idx)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page()
            page.goto(f"{server.url}/#token={server.token}")
            assert page.evaluate("sessionStorage.getItem('vprkit-key')") == server.token
            assert page.input_value("#key") == server.token and "#" not in page.url
            status = page.evaluate("""async (url) => {
                const form = new FormData();
                form.append("image", new Blob([new Uint8Array([1, 2, 3])]), "x.jpg");
                form.append("name", "page.jpg");
                const r = await fetch(url, {method: "POST", body: form,
                    headers: {"Authorization": "Bearer " + sessionStorage.getItem("vprkit-key")}});
                return r.status;
            }""", server.url + "/v1/map/images")
            assert status == 422  # same origin, with the token: accepted up to decoding the (fake) image
            evil = browser.new_page()
            evil.set_content(f"<form id=f method=post enctype=multipart/form-data action='{server.url}/v1/map/images'>"
                             "<input name=name value=evil.jpg><input type=file name=image></form>")
            with evil.expect_navigation():
                evil.evaluate("document.getElementById('f').submit()")
            assert "cross-origin" in evil.content() or "credential" in evil.content()
            browser.close()
        assert httpx.get(server.url + "/readyz").json()["map_size"] == len(MAP_FRAMES)  # nothing was added
    finally:
        server.kill()
