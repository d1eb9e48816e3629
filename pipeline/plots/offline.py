"""The page `dvc plots show` fills, with vega, vega-lite and vega-embed inline: it draws offline.

DVC's own page loads the three libraries from a CDN, so without network the plots are blank.
`.dvc/config` sets `plots.html_template` to `pipeline/plots/dvc_plots.html`, the page built
here from the npm packages pinned in `LIBRARIES` (the tarball's registry integrity and each
file's sha256 are checked). The page is committed, so a fresh clone needs no network and no
set-up step; rebuild it (network to the npm registry and `npm` needed) after changing a pin:

    python -m pipeline.plots.offline

DVC fills `{plot_divs}` (and `{refresh_tag}`) and adds its CDN `<script>` tags only where a
template has `{scripts}`; this one has none.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError, run_cli
from pipeline.io import write_text

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "dvc_plots.html"


@dataclass(frozen=True)
class Library:
    """One minified UMD build from an npm package, pinned by version and hashes."""

    package: str  # npm name
    version: str  # exact version; vega-lite 5 reads the v5 specs DVC's templates emit
    file: str  # path inside the package tarball
    sha256: str  # of `file`, as embedded in the page
    integrity: str  # the registry's `dist.integrity` of the tarball
    license: str  # its licence text, beside this module

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


# Load order matters: vega-lite needs the `vega` global, vega-embed needs both.
LIBRARIES = (
    Library("vega", "5.33.1", "build/vega.min.js",
            "463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8",
            "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8g"
            "XOzyQw==", "vendor/LICENSE-vega"),
    Library("vega-lite", "5.23.0", "build/vega-lite.min.js",
            "58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f",
            "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYA"
            "uEg6mA==", "vendor/LICENSE-vega-lite"),
    Library("vega-embed", "6.29.0", "build/vega-embed.min.js",
            "12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da",
            "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppK"
            "uM0U6Q==", "vendor/LICENSE-vega-embed"),
)

# DVC's chart divs call `vegaEmbed(el, spec)` without options. SVG rather than canvas: axis
# titles and legends are text a test (or a screen reader) can find. The action menu's editor
# and source links lead to vega.github.io, so it keeps only the offline export (SVG/PNG). A
# chart that fails says so in red where it would have been, instead of leaving a blank.
EMBED_DEFAULTS = """\
(function () {
  var embed = window.vegaEmbed;
  function fail(el, message) {
    var p = document.createElement("p");
    p.className = "plot-error";
    p.textContent = "plot failed: " + message;
    ((typeof el === "string" ? document.querySelector(el) : el) || document.body).appendChild(p);
  }
  window.addEventListener("error", function (e) { fail(document.body, e.message); });
  window.vegaEmbed = function (el, spec, opt) {
    if (typeof embed !== "function") {
      fail(el, "vega-embed did not load");
      return Promise.resolve();
    }
    var actions = {export: true, source: false, compiled: false, editor: false};
    var config = {legend: {orient: "bottom", direction: "vertical"}};  // 3 charts a row
    return embed(el, spec, Object.assign({actions: actions, renderer: "svg", config: config},
                                         opt || {}))
      .catch(function (err) { fail(el, (err && err.message) || String(err)); });
  };
})();"""

STYLE = """\
body { font-family: system-ui, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 18px; font-weight: 600; margin: 0 0 8px; }
table { border-spacing: 15px; }
/* charts side by side, images (DVC's bordered divs) below them */
body > div.vega-embed { display: inline-block; vertical-align: top; margin: 0 24px 16px 0; }
.plot-error { color: #b00020; font-weight: 600; }"""

SCRIPT_RE = re.compile(r'<script data-package="([^"]+)" data-sha256="([0-9a-f]{64})">\n(.*?)\n'
                       r"</script>", re.S)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fetch(lib: Library, workdir: Path) -> str:
    """The library's file from its npm tarball (`npm pack`), both hashes checked."""
    done = subprocess.run(["npm", "pack", lib.spec, "--pack-destination", str(workdir),
                           "--silent"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise UserError(f"npm pack {lib.spec} failed: {done.stderr.strip()[-300:]}")
    tarball = workdir / done.stdout.strip().splitlines()[-1]
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != lib.integrity:
        raise UserError(f"{tarball.name}: registry integrity sha512-{digest}, "
                        f"expected {lib.integrity}")
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"package/{lib.file}")
        if member is None:
            raise UserError(f"{tarball.name} has no {lib.file}")
        text = member.read().decode("utf-8")
    if sha256_text(text) != lib.sha256:
        raise UserError(f"{lib.spec} {lib.file}: sha256 {sha256_text(text)}, expected "
                        f"{lib.sha256}")
    return text


def render_page(sources: dict[str, str]) -> str:
    """The template: `sources` maps each library's `spec` to its file's text."""
    notes = "\n".join(f"     {lib.spec} {lib.file} sha256 {lib.sha256} "
                      f"(BSD-3-Clause, pipeline/plots/{lib.license})" for lib in LIBRARIES)
    scripts = "\n".join(f'<script data-package="{lib.spec}" data-sha256="{lib.sha256}">\n'
                        f"{sources[lib.spec]}\n</script>" for lib in LIBRARIES)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>gan-forensics: dvc plots</title>
<!-- Built by pipeline/plots/offline.py (`python -m pipeline.plots.offline`); do not edit.
     The libraries are inline so the page draws without network:
{notes}
-->
{scripts}
<script>
{EMBED_DEFAULTS}
</script>
<style>
{STYLE}
</style>
</head>
<body>
<h1>gan-forensics: training curves, detector ROC, sample grids</h1>
{{plot_divs}}
</body>
</html>
"""


def check_page(html: str) -> list[str]:
    """What is wrong with a built template (empty when it is the pinned, offline page)."""
    problems = []
    found = {spec: (pinned, sha256_text(body)) for spec, pinned, body in SCRIPT_RE.findall(html)}
    for lib in LIBRARIES:
        if lib.spec not in found:
            problems.append(f"{lib.spec} is not inline")
        elif found[lib.spec] != (lib.sha256, lib.sha256):
            problems.append(f"{lib.spec}: recorded/actual sha256 {found[lib.spec]}, pinned "
                            f"{lib.sha256}")
    if re.search(r"<script[^>]*\ssrc=", html):
        problems.append("a <script src=...> would load from elsewhere")
    if "{plot_divs}" not in html:
        problems.append("no {plot_divs} placeholder for DVC")
    if "{scripts}" in html:
        problems.append("a {scripts} placeholder would let DVC add its CDN <script> tags")
    return problems


def build(path: Path = TEMPLATE) -> Path:
    with tempfile.TemporaryDirectory(prefix="vega-npm-") as tmp:
        sources = {lib.spec: fetch(lib, Path(tmp)) for lib in LIBRARIES}
    html = render_page(sources)
    problems = check_page(html)
    if problems:
        raise UserError("; ".join(problems))
    write_text(path, html)
    return path


def main() -> None:
    path = build()
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): "
          + ", ".join(lib.spec for lib in LIBRARIES))


if __name__ == "__main__":
    run_cli(main)
