"""The built book works offline: its pages load scripts from the book only, saved widgets render,
and the slider figures of chapters 6 and 8 (Plotly, every step precomputed) work with no kernel.

The widget manager's JavaScript is committed under ``book/_static/widgets`` (see ``SOURCE.txt``
there) and ``_config.yml`` points the pages at it; plotly.js is committed under
``book/_static/plotly`` and the chapters' figure outputs load it from there. The checks on the
built HTML need ``jupyter-book build -W .`` first (CI builds before it tests; ``BOOK_HTML`` names
a book built elsewhere) and skip without it; the browser checks also need Chromium.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# a book built elsewhere (`jupyter-book build --path-output DIR .`): BOOK_HTML=DIR/_build/html
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
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


# --- the kernel-free slider figures (Plotly) of chapters 6 and 8 ---------------------------------

PLOTLY = ROOT / "book" / "_static" / "plotly"
PLOTLY_SCRIPT = "_static/plotly/plotly.min.js"
SLIDER_FIGURES = {"06_interactive": "ch6-grid-sliders", "08_reproduction": "ch8-sweep-sliders"}


def test_committed_plotly_matches_its_recorded_checksum():
    source = (PLOTLY / "SOURCE.txt").read_text()
    recorded = re.findall(r"^([0-9a-f]{64})  (\S+)$", source, re.M)
    assert [name for _, name in recorded] == ["plotly.min.js"]
    assert hashlib.sha256((PLOTLY / "plotly.min.js").read_bytes()).hexdigest() == recorded[0][0]
    assert {p.name for p in PLOTLY.iterdir()} == {"SOURCE.txt", "plotly.min.js"}
    # the version SOURCE.txt names is the one in the file's own header
    version = re.search(r"^plotly\.js: (\S+)$", source, re.M).group(1)
    assert f"plotly.js v{version}\n" in (PLOTLY / "plotly.min.js").read_text(encoding="utf-8")[:200]


def _plotly_figure(text: str, div_id: str) -> tuple[list, dict]:
    """The data and layout a page passes to Plotly.newPlot for the figure in ``div_id``."""
    call = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', text)
    assert call, f"no Plotly.newPlot call for {div_id}"
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(text, call.end())
    layout, _ = decoder.raw_decode(text, re.compile(r",\s*").match(text, end).end())
    return data, layout


def _restyled(data: list, step: dict) -> list[dict]:
    """The traces after a slider step's restyle (what Plotly does when the reader picks the step)."""
    update, indices = (step["args"] + [None])[:2]
    indices = range(len(data)) if indices is None else indices
    out = [dict(t) for t in data]
    for key, values in update.items():
        for j, i in enumerate(indices):
            out[i][key] = values[j] if isinstance(values, list) else values
    return out


@needs_build
@pytest.mark.parametrize("chapter", SLIDER_FIGURES)
def test_slider_figure_loads_the_local_plotly_and_no_cdn(chapter):
    text = (HTML / "book" / f"{chapter}.html").read_text(encoding="utf-8")
    scripts = [u.split("?")[0] for u in _page(HTML / "book" / f"{chapter}.html").loaded if "plotly" in u]
    assert scripts == [f"../{PLOTLY_SCRIPT}"]
    assert (HTML / PLOTLY_SCRIPT).read_bytes() == (PLOTLY / "plotly.min.js").read_bytes()
    assert "cdn.plot.ly" not in text and "require.min.js" not in text
    assert text.count(f'id="{SLIDER_FIGURES[chapter]}"') == 1


@needs_build
@pytest.mark.parametrize("chapter", SLIDER_FIGURES)
def test_every_precomputed_slider_step_changes_the_bars(chapter):
    """The page's sliders start where its bars are, and every step of either slider changes them."""
    data, layout = _plotly_figure((HTML / "book" / f"{chapter}.html").read_text(encoding="utf-8"),
                                  SLIDER_FIGURES[chapter])
    sparsity, threshold = layout["sliders"]
    assert len(sparsity["steps"]) >= 4 and len(threshold["steps"]) == 7
    assert [s["label"] for s in threshold["steps"]][:2] == ["none", "0"]
    roles = [t["meta"]["role"] for t in data]
    # the figure as saved is what the two active steps produce
    start = _restyled(_restyled(data, sparsity["steps"][sparsity["active"]]), threshold["steps"][threshold["active"]])
    assert [(t.get("visible", True), t["y"]) for t in start] == [(t.get("visible", True), t["y"]) for t in data]
    # a sparsity step shows exactly one sparsity per panel (and the always-shown bars); each a different one
    shown = []
    for step in sparsity["steps"]:
        after = _restyled(data, step)
        visible = {(t["meta"].get("kind", t["meta"].get("game")), t["meta"]["sparsity"])
                   for t in after if t.get("visible", True) is True and t["meta"]["sparsity"] is not None}
        assert len(visible) == 2, visible
        shown.append(frozenset(visible))
    assert len(set(shown)) == len(sparsity["steps"])
    # a threshold step sets the delta bars and the readout of every sparsity: no two steps alike
    bars = [tuple(json.dumps(t["y"]) for t, r in zip(_restyled(data, step), roles) if r == "delta")
            for step in threshold["steps"]]
    readouts = [tuple(json.dumps(t["text"]) for t, r in zip(_restyled(data, step), roles) if r == "readout")
                for step in threshold["steps"]]
    assert len(set(bars)) == len(bars) and len(set(readouts)) == len(readouts)


@needs_build
def test_chapter6_slider_steps_carry_the_grid():
    """Each threshold step of chapter 6's figure carries grid.csv's products per decision, per layer."""
    import deltalearn as dl

    grid = dl.study.load_grid()
    data, layout = _plotly_figure((HTML / "book" / "06_interactive.html").read_text(encoding="utf-8"),
                                  SLIDER_FIGURES["06_interactive"])
    dense = next(t for t in data if t["meta"]["role"] == "dense")["y"]  # all products of one decision
    checked = 0
    for step in layout["sliders"][1]["steps"]:
        for t in _restyled(data, step):
            if t["meta"]["role"] != "delta":
                continue
            row = grid[(grid["kind"] == t["meta"]["kind"]) & (grid["sparsity"] == t["meta"]["sparsity"])
                       & (grid["threshold"] == step["label"])]
            assert len(row) == 1, (t["meta"], step["label"])
            decisions = row["dense"].iloc[0] / sum(dense)  # the recorded episode's length
            expected = [row[n].iloc[0] / decisions for n in ("fc1", "fc2", "fc3")]
            assert t["y"] == pytest.approx(expected, rel=1e-9)
            checked += 1
    assert checked == len(grid)  # every cell of the grid is one step of one sparsity's bars


class _Browser:
    """Headless Chromium over the DevTools protocol, with every request off this machine failing."""

    def __init__(self, profile: Path, port: int = 9347) -> None:
        import urllib.request

        websocket = pytest.importorskip("websocket")  # websocket-client, installed with Jupyter
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
             "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
             f"--remote-debugging-port={port}", f"--remote-allow-origins=http://127.0.0.1:{port}",
             "--window-size=1200,1400", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0
        for _ in range(100):
            try:
                tabs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                break
            except OSError:
                time.sleep(0.2)
        else:
            self.close()
            pytest.fail("Chromium's DevTools endpoint did not come up")
        tab = next(t for t in tabs if t["type"] == "page")
        self.ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=60)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1200, "height": 1400, "deviceScaleFactor": 1, "mobile": False})

    def call(self, method: str, params: dict | None = None) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def close(self) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _wait_for(browser: _Browser, expression: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not browser.js(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.25)


@needs_build
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
@pytest.mark.parametrize("chapter", SLIDER_FIGURES)
def test_moving_a_slider_changes_the_figure_in_chromium_with_the_network_off(chapter, tmp_path):
    """A real click on each slider's rail, as a reader would: the bars change to that step's data."""
    div = SLIDER_FIGURES[chapter]
    gd = f"document.getElementById('{div}')"
    browser = _Browser(tmp_path)
    try:
        browser.call("Page.navigate", {"url": (HTML / "book" / f"{chapter}.html").as_uri()})
        _wait_for(browser, f"!!({gd} && {gd}._fullLayout && {gd}.querySelectorAll('.slider-group').length == 2)")
        version = re.search(r"^plotly\.js: (\S+)$", (PLOTLY / "SOURCE.txt").read_text(), re.M).group(1)
        assert browser.js("window.Plotly.version") == version  # the book's copy, not the network's
        browser.js(f"{gd}.scrollIntoView({{block: 'center'}})")
        time.sleep(0.5)
        state = f"JSON.stringify({gd}.data.map(t => [t.visible, t.y, t.text]))"
        for slider, target in ((1, 0), (0, 1)):  # threshold to "none", then sparsity to its second value
            before = browser.js(state)
            x, y = browser.js(f"""(() => {{
                const g = {gd}.querySelectorAll('.slider-group')[{slider}];
                const tick = g.querySelectorAll('.slider-tick-rect')[{target}].getBoundingClientRect();
                const rail = g.querySelector('.slider-rail-rect').getBoundingClientRect();
                return [tick.x + tick.width / 2, rail.y + rail.height / 2]; }})()""")
            browser.click(x, y)
            _wait_for(browser, f"{gd}._fullLayout.sliders[{slider}].active == {target}", 10)
            time.sleep(0.5)
            after = json.loads(browser.js(state))
            assert json.dumps(after) != before
            # what the page shows is what that precomputed step says
            step = browser.js(f"JSON.stringify({gd}.layout.sliders[{slider}].steps[{target}].args)")
            update, indices = (json.loads(step) + [None])[:2]
            indices = indices if indices is not None else range(len(after))
            column = {"visible": 0, "y": 1, "text": 2}
            for key, values in update.items():
                for j, i in enumerate(indices):
                    assert after[i][column[key]] == values[j], (key, i)
    finally:
        browser.close()
