"""Find the exercises of a chapter notebook, as the book writes them.

A chapter's exercise is three code cells in a row: a *stub* (the function to write, raising
``NotImplementedError``), a *check* (tagged ``raises-exception``: it fails until the stub is
written) and a *solution* (tagged ``hide-input``, shown only in the book). Cells tagged
``hidden-test`` after the solution are tests the student never sees; the grader runs them right
after the check. In nbgrader's terms the stub is a solution cell, the check and the hidden tests
are locked grade cells, and every other code cell is locked context.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

__all__ = ["Exercise", "HIDDEN_TEST_TAG", "chapter_exercises", "chapter_number", "read_chapter"]

HIDDEN_TEST_TAG = "hidden-test"
CHECK_TAG = "raises-exception"
SOLUTION_TAG = "hide-input"


@dataclass(frozen=True)
class Exercise:
    """One graded exercise: the indices of its cells in the chapter notebook."""

    key: str  # "1.2": chapter 1, second exercise (the gradebook column)
    name: str  # the function or class the student writes
    stub: int
    check: int
    solution: int
    hidden: tuple[int, ...] = field(default_factory=tuple)
    points: float = 1.0


def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _defined_name(source: str) -> str | None:
    """The first top-level ``def``/``class`` name in a cell."""
    m = re.search(r"^(?:def|class)\s+([A-Za-z_]\w*)", source, flags=re.M)
    return m.group(1) if m else None


def chapter_number(path: str | Path) -> int:
    """``book/03_counting.ipynb`` -> 3; a notebook not named ``NN_name.ipynb`` is refused."""
    m = re.match(r"(\d+)_", Path(path).name)
    if not m:
        raise ValueError(f"a chapter is named NN_title.ipynb, got {Path(path).name!r}")
    return int(m.group(1))


def read_chapter(path: str | Path) -> nbformat.NotebookNode:
    """A chapter notebook as nbformat v4 (every cell with an id)."""
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validator.normalize(nb)
    return nb


def chapter_exercises(nb: nbformat.NotebookNode, chapter: int) -> list[Exercise]:
    """The chapter's exercises, in order: every stub followed by a check and a solution cell.

    A stub not followed that way is an error naming the cell, so a chapter that breaks the
    pattern is found when the student version is built, not when a student is graded.
    """
    cells = nb.cells
    code = [i for i, c in enumerate(cells) if c.cell_type == "code"]
    out: list[Exercise] = []
    for pos, i in enumerate(code):
        src = cells[i].source
        if "NotImplementedError" not in src or SOLUTION_TAG in _tags(cells[i]) or CHECK_TAG in _tags(cells[i]):
            continue
        if pos + 2 >= len(code):
            raise ValueError(f"chapter {chapter}: stub cell {i} has no check and solution after it")
        check, sol = code[pos + 1], code[pos + 2]
        if CHECK_TAG not in _tags(cells[check]) or SOLUTION_TAG not in _tags(cells[sol]):
            raise ValueError(f"chapter {chapter}: stub cell {i} ({cells[i].get('id')}) must be followed by a "
                             f"check cell tagged {CHECK_TAG!r} and a solution cell tagged {SOLUTION_TAG!r}")
        name = _defined_name(src)
        if name is None or name != _defined_name(cells[sol].source):
            raise ValueError(f"chapter {chapter}: stub cell {i} defines {name!r}, its solution "
                             f"{_defined_name(cells[sol].source)!r}")
        hidden = []
        for j in code[pos + 3:]:
            if HIDDEN_TEST_TAG not in _tags(cells[j]):
                break
            hidden.append(j)
        out.append(Exercise(key=f"{chapter}.{len(out) + 1}", name=name, stub=i, check=check,
                            solution=sol, hidden=tuple(hidden)))
    return out
