"""Open a report page in the system's headless Chromium (via Playwright, never a downloaded browser) and
say what a person would see: console errors, first paint, visible plots and rows, filters and paging.

Used by the browser test and by `bench/report_browser.py`; needs the `dev` extra (playwright) and
Debian's `chromium` package.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """The system Chromium executable, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#queries tr[data-status]",
        "rs => rs.map(r => ({status: r.dataset.status, name: r.cells[0].innerText}))")


def _match_figures(page, rendered: int = 2) -> list[dict]:
    """The rows' match-figure cells (caption, image width, shown); the first `rendered` figures also as the
    browser draws them (PNG of the element, once loaded)."""
    cells = page.locator("#queries td.match")
    out = []
    for i in range(cells.count()):
        imgs = cells.nth(i).locator("img")
        fig = {"text": cells.nth(i).inner_text().strip(), "visible": imgs.count() > 0 and imgs.first.is_visible()}
        if fig["visible"] and i < rendered:
            imgs.first.scroll_into_view_if_needed()
            fig["width"] = imgs.first.evaluate("i => i.decode().then(() => i.naturalWidth)")
            fig["png"] = imgs.first.screenshot()
        out.append(fig)
    return out


def _entry_ms(page, name: str, timeout_ms: int = 10_000) -> float | None:
    """A performance entry's start time, or None if it never comes: paint entries are recorded after the load
    event, later still on a busy CPU, so read right after `load` they may not exist yet."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        return page.wait_for_function(f"() => performance.getEntriesByName('{name}')[0]?.startTime",
                                      timeout=timeout_ms).json_value()
    except PlaywrightTimeout:
        return None


def inspect(page_path: Path, screenshot: Path | None = None, click: str | None = None, width: int = 1400) -> dict:
    """Load `page_path` from file://, optionally click the filter button `click`, and report what shows
    (in a `width` x 1000 viewport)."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no chromium executable on PATH (Debian: apt-get install -y chromium)")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 1000})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
        fcp, rows_ms = _entry_ms(page, "first-contentful-paint"), _entry_ms(page, "vprkit-rows-rendered")
        plots = page.eval_on_selector_all(
            "#plots img", "is => is.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth, "
                          "visible: i.getBoundingClientRect().height > 0}))")
        first_row_visible = page.is_visible("#queries tr[data-status]")
        out = {"console_errors": errors, "first_contentful_paint_ms": fcp, "rows_rendered_ms": rows_ms, "plots": plots,
               "first_row_visible": first_row_visible, "rows": _rows(page),
               "page_info": page.inner_text("#page-info"),
               "filters": page.eval_on_selector_all("#controls button", "bs => bs.map(b => b.innerText)")}
        out["match_note"] = page.inner_text("#match-note") if page.locator("#match-note").count() else None
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
        out["match_figures"] = _match_figures(page)
        if click is not None:
            page.click(f"#controls button[data-filter='{click}']")
            out["filtered_rows"] = _rows(page)
            out["filtered_page_info"] = page.inner_text("#page-info")
            if page.is_enabled("#next"):
                page.click("#next")
                out["next_page_rows"] = _rows(page)
                out["next_page_info"] = page.inner_text("#page-info")
        browser.close()
    return out
