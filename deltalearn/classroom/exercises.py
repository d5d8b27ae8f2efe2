"""Find the exercises of a chapter notebook, as the book writes them.

A chapter's exercise is three code cells in a row: a *stub* (the function to write, raising
``NotImplementedError``), a *check* (tagged ``raises-exception``: it fails until the stub is
written) and a *solution* (tagged ``hide-input``, shown only in the book). Cells tagged
``hidden-test`` after the solution are tests the student never sees; the grader runs them right
after the check. In nbgrader's terms the stub is a solution cell, the check and the hidden tests
are locked grade cells, and every other code cell is locked context.

An exercise's key is ``N.M``: N is the chapter's number, from its file name (``10_six_games.ipynb``
is chapter 10), and M the number in the exercise's heading ``### Exercise N.M: title`` (the nearest
one above its stub), so open questions, which have headings but no code, keep their numbers. A
chapter whose headings are not numbered that way counts its code exercises 1, 2, ... instead.
Open questions get a model answer in a markdown cell tagged ``model-answer``, which the student
version drops.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

__all__ = ["Exercise", "HIDDEN_TEST_TAG", "MODEL_ANSWER_TAG", "chapter_exercises", "chapter_number",
           "exercise_heading", "read_chapter"]

HIDDEN_TEST_TAG = "hidden-test"
MODEL_ANSWER_TAG = "model-answer"
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


_HEADING = re.compile(r"^#{1,6}\s+Exercise\s+(\d+)\.(\d+)(?=[\s:.]|$)", flags=re.M)


def exercise_heading(source: str) -> tuple[int, int] | None:
    """``(N, M)`` of the last ``### Exercise N.M: title`` heading in a markdown cell, else None."""
    found = _HEADING.findall(source)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def _heading_before(cells: list, stub: int, after: int, chapter: int) -> int | None:
    """M of the nearest ``Exercise N.M`` heading in the markdown cells between ``after`` and ``stub``."""
    for j in range(stub - 1, after, -1):
        if cells[j].cell_type != "markdown":
            continue
        h = exercise_heading(cells[j].source)
        if h is None:
            continue
        if h[0] != chapter:
            raise ValueError(f"chapter {chapter} (from its file name): cell {j} is headed Exercise {h[0]}.{h[1]}; "
                             f"number it Exercise {chapter}.{h[1]}")
        return h[1]
    return None


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
        after = max((e.solution, *e.hidden)[-1] for e in out) if out else -1
        number = _heading_before(cells, i, after, chapter)
        out.append(Exercise(key=f"{chapter}.{len(out) + 1 if number is None else number}", name=name, stub=i,
                            check=check, solution=sol, hidden=tuple(hidden)))
    keys = [e.key for e in out]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"chapter {chapter}: two code exercises are numbered {', '.join(twice)}; give each its own "
                         "heading ### Exercise N.M: title")
    return out
