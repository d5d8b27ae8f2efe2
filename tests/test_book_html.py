"""The built book works offline: its pages load scripts from the book only, and saved widgets render.

The widget manager's JavaScript is committed under ``book/_static/widgets`` (see ``SOURCE.txt``
there) and ``_config.yml`` points the pages at it. The checks on the built HTML need
``jupyter-book build -W .`` first (CI builds before it tests) and skip without it; the browser
check also needs Chromium.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
WIDGETS = ROOT / "book" / "_static" / "widgets"
WIDGET_SCRIPT = "_static/widgets/embed.js"
WIDGET_CHAPTERS = ("06_interactive", "08_reproduction")
STATE_MIME = "application/vnd.jupyter.widget-state+json"

needs_build = pytest.mark.skipif(
    not (HTML / "index.html").is_file(),
    reason=f"no built book at {HTML}: run `jupyter-book build -W .` from the repository root first")


class _Resources(HTMLParser):
    """The URLs a page loads as it opens: script sources and linked stylesheets, fonts, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.widget_state = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.loaded.append(a["src"])
        if tag == "script" and a.get("type") == STATE_MIME:
            self.widget_state = True
        # a stylesheet, preload or icon is fetched on load; a plain <a href> is not
        if tag == "link" and a.get("href") and a.get("rel") not in ("canonical", "index", "search",
                                                                    "next", "prev", "author"):
            self.loaded.append(a["href"])


def _page(path: Path) -> _Resources:
    parser = _Resources()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _is_remote(url: str) -> bool:
    return re.match(r"^(https?:)?//", url) is not None


def test_committed_widget_files_match_their_recorded_checksums():
    """SOURCE.txt records where the files came from and their sums; an edited copy fails here."""
    recorded = re.findall(r"^([0-9a-f]{64})  (\S+)$", (WIDGETS / "SOURCE.txt").read_text(), re.M)
    names = {name for _, name in recorded}
    assert "embed.js" in names and len(recorded) >= 3
    for digest, name in recorded:
        assert hashlib.sha256((WIDGETS / name).read_bytes()).hexdigest() == digest, name
    shipped = {p.name for p in WIDGETS.iterdir()} - {"SOURCE.txt"}
    assert shipped == names, f"files in {WIDGETS} without a recorded sum: {sorted(shipped - names)}"


def test_config_has_repository_launch_buttons_and_the_new_pages():
    config = (ROOT / "_config.yml").read_text()
    assert re.search(r"^repository:\n  url: https://github\.com/\S+", config, re.M)
    assert re.search(r"^  binderhub_url: https://\S+", config, re.M)
    assert re.search(r"^  colab_url: https://\S+", config, re.M)
    assert "widgets/embed.js" in config
    toc = (ROOT / "_toc.yml").read_text()
    for page in ("get_started", "glossary", "instructors"):
        assert f"file: book/{page}\n" in toc, page


@needs_build
def test_no_built_page_loads_anything_from_outside_the_book():
    pages = sorted(HTML.rglob("*.html"))
    assert len(pages) >= 12  # the chapters, the front and back matter
    remote = {str(p.relative_to(HTML)): [u for u in _page(p).loaded if _is_remote(u)] for p in pages}
    assert {k: v for k, v in remote.items() if v} == {}
    # the old CDN defaults of myst-nb (require.js, the AMD widget manager) are gone too
    for p in pages:
        text = p.read_text(encoding="utf-8")
        assert "data-jupyter-widgets-cdn" not in text and "require.min.js" not in text, p.name


@needs_build
@pytest.mark.parametrize("chapter", WIDGET_CHAPTERS)
def test_widget_chapters_load_the_local_widget_manager(chapter):
    page = _page(HTML / "book" / f"{chapter}.html")
    assert page.widget_state, f"{chapter} has no saved widget state"
    # Sphinx appends a ?v=<hash> cache-buster to the path
    assert [u.split("?")[0] for u in page.loaded if "embed" in u] == [f"../{WIDGET_SCRIPT}"]
    built = HTML / WIDGET_SCRIPT
    assert built.read_bytes() == (WIDGETS / "embed.js").read_bytes()


def _expected_controls(chapter: str) -> dict[str, int]:
    """Sliders and dropdowns saved in the chapter's widget state: each must render as one control."""
    nb = json.loads((ROOT / "book" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    models = nb["metadata"]["widgets"][STATE_MIME]["state"].values()
    names = [m["model_name"] for m in models]
    return {"widget-hslider": sum(n.endswith("SliderModel") for n in names),
            "widget-dropdown": names.count("DropdownModel")}


@needs_build
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
@pytest.mark.parametrize("chapter", WIDGET_CHAPTERS)
def test_saved_controls_render_in_chromium_with_the_network_off(chapter, tmp_path):
    # a proxy on a closed local port, loopback not exempt: every request off this machine fails
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           "--virtual-time-budget=8000", "--dump-dom", (HTML / "book" / f"{chapter}.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout
    classes = re.findall(r'<div class="([^"]*)"', dom)
    rendered = {kind: sum(kind in c.split() for c in classes) for kind in ("widget-hslider", "widget-dropdown")}
    expected = _expected_controls(chapter)
    assert expected["widget-hslider"] >= 1
    assert rendered == expected
