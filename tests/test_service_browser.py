"""The service's web page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
upload a Corridor query, see its correct map image first, with thumbnails and the map of positions; follow a
robot's stream replayed with `vprkit replay`.

Set VPRKIT_SCREENSHOT_DIR to keep the screenshots (docs/img/service-page.png and service-live.png were made
that way)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from service_server import DEMO, MAP_FRAMES, Server, build_index, map_name, query  # noqa: E402

from vprkit.service.auth import add_key  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
START = 60  # the replayed frames: Corridor queries 60..109
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
            page.locator("#photo").screenshot(path=str(shot))
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


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_page_follows_a_replayed_robot_stream(tmp_path):
    """`vprkit replay` sends 50 Corridor query frames to a server of all 111 map frames (positions from their
    names); the open page picks the stream up, gets the answers pushed and draws every estimate of the track and
    the current one: read from the SVG's data, compared with the server's own history of the stream."""
    idx = build_index(tmp_path, extra={map_name(i): i for i in range(111) if i not in MAP_FRAMES})
    server = Server(idx)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.goto(server.url + "/")
            replay = subprocess.run([sys.executable, "-m", "vprkit.cli", "replay", str(DEMO / "query"), "--url",
                                     server.url, "--fps", "10", "--start", str(START), "--limit", "50",
                                     "--stream", "robot-1"], capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert replay.returncode == 0, replay.stderr
            assert "50 frames sent" in replay.stdout
            page.wait_for_selector("#live-frames[data-frames='50']", timeout=60_000)
            history = httpx.get(server.url + "/v1/streams/robot-1").json()["history"]
            assert [a["frames"] for a in history] == list(range(1, 51))
            svg = page.locator("#live-map")
            assert svg.get_attribute("data-track") == "50" and svg.get_attribute("data-points") == "111"
            assert page.locator("#live-map circle.track-point").count() == 50
            assert page.locator("#live-map circle.map-point").count() == 111
            drawn = page.eval_on_selector("#track", "t => t.dataset.names.split('\\n')")
            assert drawn == [a["estimate"]["name"] for a in history]  # the whole track, in order
            assert int(svg.get_attribute("data-pushed")) >= 1  # answers came pushed, not only as history
            last = history[-1]
            current = page.locator("#current")
            assert current.get_attribute("data-name") == last["estimate"]["name"]
            assert float(current.get_attribute("data-x")) == last["estimate"]["position"][0]
            assert page.get_attribute("#live-state", "data-state") == last["state"]
            assert f"{last['estimate']['confidence']:.3f}" in page.inner_text("#live-confidence")
            labels = page.eval_on_selector_all("#live-map text.map-label", "ts => ts.map(t => t.firstChild.nodeValue)")
            assert labels and all(len(t) <= 14 and "@" not in t for t in labels)  # short labels
            assert len(labels) >= 5 and set(labels) <= {f"{i:07d}" for i in range(111)}  # the frame names' stems
            boxes = page.eval_on_selector_all("#live-map text.map-label", "ts => ts.map(t => { const b = t.getBBox(); "
                                              "return [b.x, b.y, b.x + b.width, b.y + b.height]; })")
            assert not any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]  # no two labels overlap
                           for i, a in enumerate(boxes) for b in boxes[i + 1:])
            assert page.locator("#live-map-scale").count() == 1
            ticks = page.eval_on_selector_all("#live-map text", "ts => ts.map(t => t.textContent)")
            assert {"0", "20", "40"} <= set(ticks)  # the x axis's ticks (the route runs along x)
            page.wait_for_function("document.getElementById('live-thumb').naturalWidth === 160")  # its image
            assert page.get_attribute("#live-thumb", "title") == last["estimate"]["name"]
            shot = Path(os.environ.get("VPRKIT_SCREENSHOT_DIR", tmp_path)) / "service-live.png"
            page.locator("#live").screenshot(path=str(shot))
            browser.close()
    finally:
        server.kill()
