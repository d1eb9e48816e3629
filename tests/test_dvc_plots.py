"""`dvc plots show` draws the loss, D-output and ROC curves and the image plots, offline.

The page template (pipeline/plots/dvc_plots.html, set in .dvc/config) carries vega, vega-lite and
vega-embed inline. Headless Chromium loads the page DVC writes from file:// with every network
request sent to a dead proxy and every host name unresolvable; the test reads the rendered DOM
(the charts draw as SVG) and keeps a screenshot in tests/artifacts/dvc-plots.png. A control
page with DVC's CDN <script> tags stays blank under the same flags, so the test would notice a
page that needed the network.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from pipeline.plots.offline import LIBRARIES, TEMPLATE, check_page

from conftest import BIN, REPO, copy_repo, repo_env
from servers import chromium, chromium_cmd, stop

ARTIFACTS = REPO / "tests" / "artifacts"
CHARTS = ("losses", "discriminator", "roc")
# Chromium with no way out: a dead proxy for every URL, no name resolution.
OFFLINE = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND")
# What the committed metrics/ must hold for the page (samples/ is a DVC-cached out: made here).
METRICS = ("dcgan/train_log.csv", "roc.csv", "dcgan/train_loss.png", "quality/quality.png",
           "detector/roc.png", "crossgen/matrix_auc.png", "crossgen/robustness.png")


def test_template_is_the_pinned_offline_page() -> None:
    html = TEMPLATE.read_text(encoding="utf-8")
    assert check_page(html) == []
    for lib in LIBRARIES:
        assert (TEMPLATE.parent / lib.license).is_file(), lib.license
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    configured = (REPO / ".dvc" / config["plots"]["html_template"]).resolve()
    assert configured == TEMPLATE


def test_check_page_catches_a_cdn_or_tampered_page() -> None:
    html = TEMPLATE.read_text(encoding="utf-8")
    cdn = html.replace("{plot_divs}", '<script src="https://cdn.jsdelivr.net/npm/vega@5">'
                                      "</script>{scripts}{plot_divs}")
    assert any("src=" in p for p in check_page(cdn))
    assert any("{scripts}" in p for p in check_page(cdn))
    tampered = html.replace('"use strict";', '"use strict";window.x=1;', 1)
    assert any(LIBRARIES[0].spec in p for p in check_page(tampered))


class Charts(HTMLParser):
    """Per chart div (by id): its text, and how many drawn line paths its SVG holds."""

    def __init__(self, ids: tuple[str, ...]) -> None:
        super().__init__()
        self.ids, self.text, self.lines = ids, {i: [] for i in ids}, dict.fromkeys(ids, 0)
        self.imgs: list[str] = []
        self._chart: str | None = None
        self._depth = 0  # open <div>s inside the current chart
        self._groups: list[str] = []  # classes of the open <g>s inside it

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if self._chart is None:
            if tag == "div" and a.get("id") in self.ids:
                self._chart, self._depth = a["id"], 1
            return
        if tag == "div":
            self._depth += 1
        elif tag == "g":
            self._groups.append(a.get("class") or "")
        elif tag == "path" and any("mark-line" in g for g in self._groups) \
                and len(a.get("d") or "") > 10:
            self.lines[self._chart] += 1

    def handle_endtag(self, tag: str) -> None:
        if self._chart is None:
            return
        if tag == "g" and self._groups:
            self._groups.pop()
        elif tag == "div":
            self._depth -= 1
            if self._depth == 0:
                self._chart = None

    def handle_data(self, data: str) -> None:
        if self._chart is not None and data.strip():
            self.text[self._chart].append(data.strip())


def plots_repo(tmp_path: Path) -> Path:
    """A repo copy holding the committed metrics files plus two small sample grids."""
    from PIL import Image

    repo = copy_repo(tmp_path / "repo")
    for rel in METRICS:
        (repo / "metrics" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "metrics" / rel, repo / "metrics" / rel)
    rng = np.random.default_rng(0)
    (repo / "metrics" / "dcgan" / "samples").mkdir()
    for epoch in (1, 2):
        grid = rng.integers(0, 256, (58, 58), dtype=np.uint8)
        Image.fromarray(grid).save(repo / "metrics" / "dcgan" / "samples" /
                                   f"epoch_{epoch:03d}.png")
    return repo


def run_chromium(profile: Path, *args: str, timeout: float = 120) -> str:
    proc = subprocess.Popen(chromium_cmd(profile, *OFFLINE, "--virtual-time-budget=10000",
                                         *args),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    return out.decode(errors="replace")


@pytest.mark.integration
def test_dvc_plots_show_draws_every_plot_offline(tmp_path) -> None:
    if not chromium():
        pytest.skip("chromium is not installed (make test installs it where apt is available)")
    repo = plots_repo(tmp_path)
    env = repo_env(repo)
    done = subprocess.run([str(BIN / "dvc"), "plots", "show"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    page = repo / "dvc_plots" / "index.html"
    assert done.stdout.strip().endswith(page.as_uri()), done.stdout
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\ssrc=", html), "a script loads from elsewhere"
    assert "cdn.jsdelivr" not in html and "<title>gan-forensics" in html

    dom = run_chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    # The template shows a chart's failure in a <p class="plot-error"> where it would be.
    assert 'class="plot-error"' not in dom and "Failed to load" not in dom, dom[-2000:]
    charts = Charts(CHARTS)
    charts.feed(dom)
    text = {chart: " | ".join(words) for chart, words in charts.text.items()}
    # Each chart drew its lines (one path per series) with its axes and legend.
    assert charts.lines == {"losses": 2, "discriminator": 2, "roc": 1}, (charts.lines, text)
    assert "GAN losses per epoch" in text["losses"]
    for word in ("epoch", "loss_d", "loss_g"):
        assert word in text["losses"], text["losses"]
    for word in ("D(x) = d_real", "D(G(z)) = d_fake", "d_real", "d_fake"):
        assert word in text["discriminator"], text["discriminator"]
    assert "fpr (false positive rate)" in text["roc"] and "tpr (true positive rate)" in text["roc"]
    # Images: DVC copies each into dvc_plots/static and links it relatively.
    wanted = ["dcgan_train_loss.png", "quality_quality.png", "detector_roc.png",
              "dcgan_samples_epoch_001.png", "dcgan_samples_epoch_002.png",
              "crossgen_matrix_auc.png", "crossgen_robustness.png"]
    for name in wanted:
        src = next((s for s in charts.imgs if s.endswith(name)), None)
        assert src and not src.startswith(("http:", "https:")), (name, charts.imgs)
        assert (page.parent / src).is_file(), src

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dvc-plots.png"
    shot.unlink(missing_ok=True)
    run_chromium(tmp_path / "profile", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000

    # The control: DVC's own CDN <script> tags, same flags, draw nothing.
    control = tmp_path / "cdn.html"
    control.write_text("<html><head>{scripts}</head><body>{plot_divs}</body></html>")
    subprocess.run([str(BIN / "dvc"), "plots", "show", "--html-template", str(control), "-o",
                    "cdn_plots"], cwd=repo, env=env, capture_output=True, check=True,
                   timeout=300)
    cdn_html = (repo / "cdn_plots" / "index.html").read_text()
    assert "cdn.jsdelivr.net" in cdn_html
    cdn = Charts(CHARTS)
    cdn.feed(run_chromium(tmp_path / "profile", "--dump-dom",
                          (repo / "cdn_plots" / "index.html").as_uri()))
    assert cdn.lines == dict.fromkeys(CHARTS, 0)
