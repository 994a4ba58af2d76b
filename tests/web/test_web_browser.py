"""The web page as a person uses it: headless chromium against `i2vd web` beside a real daemon.

Needs Debian's chromium (.ci/run installs it); Playwright drives that binary and never downloads one.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import PIL.Image
import pytest

from support.daemons import daemon_env, wait_for
from support.web import WebProcess

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
TINY_FORM = {"width": "32", "height": "32", "num_frames": "8"}


@pytest.fixture
def browser_page(tmp_path):
    """A fresh headless chromium profile and page; skips without chromium, except in CI."""
    missing = None
    if not (shutil.which("chromium") or os.path.exists(CHROMIUM)):
        missing = f"chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install 'i2vd[test]')"
    if missing:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(120_000)
            yield page
        finally:
            context.close()


def photo(path: Path) -> Path:
    """A small picture with something in it (a gradient sky over a sea)."""
    img = PIL.Image.new("RGB", (96, 64))
    img.putdata([(40 + x, 90 + y, 200 - y) if y < 36 else (20, 60 + x // 2, 120) for y in range(64) for x in range(96)])
    img.save(path, quality=90)
    return path


def submit(page, url: str, images: Path | list[Path], prompt: str, **advanced: str) -> None:
    page.goto(f"{url}/")
    page.set_input_files("#image", [str(p) for p in images] if isinstance(images, list) else str(images))
    page.fill("textarea[name=prompt]", prompt)
    page.click("details summary")
    for name, value in {**TINY_FORM, **advanced}.items():
        page.fill(f"input[name={name}]", value)
    page.click("button.primary")


def test_upload_watch_play_cancel_and_see_a_rejection(dirs, run_daemon, browser_page, tmp_path):
    page = browser_page
    env = daemon_env(dirs)
    daemon = run_daemon(env)
    daemon.wait_ready()
    web = WebProcess(env, tmp_path, "--address", "127.0.0.1:0")
    try:
        url = web.wait_url()

        # 1. Upload a photo through the form; the job appears and, pushed by events, finishes.
        submit(page, url, photo(tmp_path / "harbour.jpg"), "a harbour at dusk, boats rocking", steps="10",
               seed="3")
        assert "job #1" in page.inner_text("#outcomes li.ok")
        page.wait_for_selector('#finished tr[data-job-row="1"] .state-succeeded')  # no reload: SSE did it

        # 2. Its page plays the video.
        page.goto(f"{url}/jobs/1")
        page.wait_for_function("() => { const v = document.getElementById('video');"
                               " return v && v.readyState >= 2 && v.videoWidth > 0 && v.currentTime > 0; }")
        assert page.evaluate("document.getElementById('video').videoWidth") == 32
        page.screenshot(path=str(DOCS / "web-job.png"), full_page=True)

        # 3. Two long jobs in one upload: one runs and its progress moves on the queue page, the other
        #    waits at position 1; the Cancel buttons stop both.
        submit(page, url, [photo(tmp_path / "lighthouse.jpg"), photo(tmp_path / "cliffs.png")],
               "a lighthouse in a storm", steps="150")
        assert page.locator("#outcomes li.ok").count() == 2
        page.goto(f"{url}/")
        step = '#running .progress[data-job="2"] .step'
        first = int(page.wait_for_selector(step + ":has-text('step')").inner_text().split()[1].split("/")[0])
        page.wait_for_selector('#waiting tr[data-job-row="3"] .position:text-is("1")')
        page.wait_for_function(
            f"() => {{ const s = document.querySelector('{step}');"
            f" return s && parseInt(s.textContent.split(' ')[1]) > {first}; }}")
        page.screenshot(path=str(DOCS / "web-queue.png"), full_page=True)
        page.click('#waiting button[data-action="cancel"][data-job="3"]')
        page.wait_for_selector('#finished tr[data-job-row="3"] .state-cancelled')
        page.click('#running button[data-action="cancel"][data-job="2"]')
        page.wait_for_selector('#finished tr[data-job-row="2"] .state-cancelled')

        # 4. A file dragged onto the form that is no picture: the rejection says why, in intake's words.
        page.goto(f"{url}/")
        page.evaluate("""() => {
            const data = new DataTransfer();
            data.items.add(new File(["this is not a picture"], "notes.png", {type: "image/png"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        }""")
        assert page.inner_text("#chosen") == "notes.png"
        page.fill("textarea[name=prompt]", "anything")
        page.click("button.primary")
        error = page.inner_text("#outcomes li.error")
        assert "not_an_image" in error and "notes.png is not a PNG, JPEG or WEBP image" in error
    finally:
        status = web.stop()
    assert status in (0, -signal.SIGTERM)  # uvicorn ends by the signal it was sent, after a clean shutdown
    assert "timeout graceful shutdown exceeded" not in web.output  # the page's event stream ended at once
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output and "Traceback" not in web.output
    wait_for(lambda: (DOCS / "web-queue.png").exists(), timeout=5, what="queue screenshot")
