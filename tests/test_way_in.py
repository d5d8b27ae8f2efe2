"""The way in for a new reader: Binder gets the CPU build of torch and the library, the glossary
defines the terms the chapters link, and the pages say how to start."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# terms issue 15 asks for, and the ones the chapters link with {term}
TERMS = ["HNS", "Policy", "Target network", "DAgger", "Significant multiplication", "Delta network", "Threshold",
         "Delta threshold", "Sparsity", "Pruning", "One-shot pruning", "Distillation", "Fine-tuning",
         "Replay buffer", "Epsilon-greedy", "Frame stacking", "Sticky actions", "No-op starts", "Open loop",
         "Closed loop", "Action agreement", "Paired difference", "MAC", "Double DQN", "N-step return",
         "Multi-step return", "Crossover", "Nature DQN", "DQN", "Q-value", "Return", "All products",
         "Reduction factor", "Held-out episodes", "Drift-free rule"]


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_binder_installs_the_cpu_build_of_the_pinned_torch_and_the_library():
    pinned = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("torch"))
    lines = _lines(ROOT / "binder" / "requirements.txt")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert f"{pinned}+cpu" in lines, f"binder must pin the CPU build of {pinned}"
    assert not any(ln.startswith("torch") and "+cpu" not in ln for ln in lines)
    post = ROOT / "binder" / "postBuild"
    assert post.stat().st_mode & 0o111, "postBuild must be executable"
    assert re.search(r"^pip install .*-e \"?\.(\[|\"|\s|$)", post.read_text(), re.M), "postBuild installs the library"


def test_the_glossary_defines_every_term_the_book_needs():
    text = (ROOT / "book" / "glossary.md").read_text()
    body = text[text.index("```{glossary}"):]
    defined = {ln for ln in body.splitlines() if ln and not ln.startswith((" ", "`", ":"))}
    missing = [t for t in TERMS if t not in defined]
    assert not missing, f"glossary lacks {missing}"
    assert "{cite:p}`ross2011reduction`" in body  # DAgger is cited


def test_the_pages_name_the_project_home_and_the_classroom_commands():
    config = (ROOT / "_config.yml").read_text()
    assert "placeholder" not in config.lower() and "url: https://github.com/deltalearn/deltalearn" in config
    start = (ROOT / "book" / "get_started.md").read_text()
    assert 'importlib.util.find_spec("deltalearn") is None' in start and "%xmode Minimal" in start
    teach = (ROOT / "book" / "instructors.md").read_text()
    for needed in ("deltalearn classroom student", "deltalearn classroom grade", "--timeout", "nbgrader", "otter"):
        assert needed in teach, f"instructors.md does not mention {needed}"
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):readme.index("##", readme.index("## Quick start") + 3)]
    block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    assert len(block.strip().splitlines()) == 2, "the README's quick start stays two commands"
    assert "get_started" in readme and "deltalearn classroom grade" in readme
