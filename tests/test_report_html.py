"""reports/index.html (latlab.report.html): self-contained, every section present, and checked in a real headless
Chromium (Debian's `chromium`; `make test` installs it): no blank page, no broken image, no console error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from latlab.report.html import SECTIONS, build_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# `make test` sets this, so CI fails instead of skipping when the browser did not get installed
REQUIRE_BROWSER = os.environ.get("LATLAB_REQUIRE_BROWSER") == "1"

# Runs before the page's own content: records script errors and console.error calls; after load it writes what it
# found (broken images, errors, visible text length) into a <pre> that --dump-dom returns.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const __consoleError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); __consoleError(...a); };
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40));
  const pre = document.createElement('pre'); pre.id = '__latlab_check';
  pre.textContent = JSON.stringify({broken, errors: window.__errors, images: document.images.length,
                                    text: document.body.innerText.length});
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def page() -> str:
    return build_report(ROOT)


def test_page_is_self_contained_with_every_section(page):
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page loads nothing from the network"
    for section in SECTIONS:
        assert f'id="{section.key}"' in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)


def test_a_missing_report_is_named_not_skipped(tmp_path):
    page = build_report(tmp_path)
    assert "reports/asr_matrix.md not found" in page
    assert "reports/scorecard.md not found: run `make study`" in page


def test_run_links_and_stage_times(tmp_path):
    runs = {"evaluate": {"url": "http://127.0.0.1:5000/#/experiments/1/runs/abc", "duration_s": 81.5}}
    page = build_report(tmp_path, runs)
    assert 'href="http://127.0.0.1:5000/#/experiments/1/runs/abc"' in page
    assert "<td>evaluate</td><td>82</td>" in page


def _browser_check(html_text: str, tmp_path: Path) -> tuple[dict, Path]:
    if CHROMIUM is None:
        if REQUIRE_BROWSER:
            pytest.fail("chromium not found: `make test` installs Debian's chromium (apt-get install chromium)")
        pytest.skip("chromium not installed (make test installs it)")
    probe = tmp_path / "probe.html"
    probe.write_text(html_text.replace("<head>", "<head>" + PROBE, 1))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="__latlab_check">(.*?)</pre>', dom.stdout, re.S)
    assert match, f"the page did not finish loading: {dom.stderr[-2000:]}"
    result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    shot = tmp_path / "screenshot.png"
    subprocess.run([*flags, "--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}",
                    probe.as_uri()], capture_output=True, timeout=120)
    return result, shot


def test_page_renders_in_chromium(page, tmp_path):
    from PIL import Image, ImageStat

    result, shot = _browser_check(page, tmp_path)
    assert result["broken"] == [] and result["errors"] == []
    assert result["images"] >= 5 and result["text"] > 1000
    assert shot.exists(), "chromium wrote no screenshot"
    with Image.open(shot) as image:
        gray = image.convert("L")
        assert gray.size == (1280, 1600)
        assert ImageStat.Stat(gray).stddev[0] > 10, "blank page"


def test_browser_check_catches_a_broken_image_and_a_console_error(tmp_path):
    bad = ('<!DOCTYPE html><html><head><title>t</title></head><body><p>text</p>'
           '<img alt="broken" src="data:image/png;base64,AAAA"><script>console.error("boom")</script></body></html>')
    result, _ = _browser_check(bad, tmp_path)
    assert result["broken"] == ["broken"]
    assert "boom" in result["errors"]


def test_model_version_page_shows_its_card_in_the_mlflow_ui(tmp_path):
    """The registry card (latlab.report.model_card) as a user sees it: a local MLflow server, the version page in
    Chromium."""
    import socket
    import sys
    import time
    import urllib.request

    from mlflow import MlflowClient

    from latlab.report.model_card import training_card

    if CHROMIUM is None:
        _browser_check("", tmp_path)  # fails or skips with the reason
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=db)
    client.create_registered_model("latlab-rt-lat")
    version = client.create_model_version("latlab-rt-lat", source=str(tmp_path)).version
    card = training_card("rt-lat", "lat", {"made_by": "targeted LAT on top of RT", "parent": "latlab-rt"}, "abc123",
                         {"data/world": "d" * 32}, {"lat": {"epsilon": 1.5}}, {"wall_seconds": 38.0}, "1")
    client.update_model_version("latlab-rt-lat", version, description=card)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db, "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                              f"http://127.0.0.1:{port}/#/models/latlab-rt-lat/versions/{version}"],
                             capture_output=True, text=True, timeout=180).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "targeted LAT on top of RT" in dom and "parent: latlab-rt v1" in dom
