"""Autograde student notebooks: the visible check and hidden tests of every exercise.

Built on nbgrader's model of a notebook (see ``exercises``): the locked cells (the chapter's own
code, the checks and the hidden tests) come from the book's source, as nbgrader's autograder
overwrites them, and only the student's answer cells come from the submission. An exercise earns
its points when every grade cell runs without an error, judged by ``nbgrader.utils.determine_grade``.

Student code runs in a Jupyter kernel, a subprocess, one cell at a time with a time limit. A cell
that times out or kills the kernel costs its exercise: the kernel is shut down and a new one goes
on from the next exercise, with the book's solutions of the earlier ones as its context.

The kernel works in an empty temporary folder, as a downloaded chapter does: chapters read their
data from the installed library (``dl.study.book_data``), never from the book's folder, and a
student's stray files land nowhere near the book or the submissions.
"""
from __future__ import annotations

import csv
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .exercises import Exercise, chapter_exercises, chapter_number, read_chapter

__all__ = ["ChapterGrade", "grade_chapter", "grade_submissions"]

ROLE = "deltalearn_role"  # cell metadata key for the grading notebook: context, answer, graded, solution


@dataclass
class ChapterGrade:
    """Points per exercise key ("1.2") for one student's chapter, and what went wrong."""

    points: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _answer_cells(student: nbformat.NotebookNode, e: Exercise, source: nbformat.NotebookNode) -> list:
    """The student's cells for exercise ``e``: the stub (found by cell id, else by the name it
    defines) and any code cells the student added after it, up to the next cell of the book."""
    from .exercises import _defined_name

    book_ids = {c.get("id") for c in source.cells}
    ids = [c.get("id") for c in student.cells]
    stub_id = source.cells[e.stub].get("id")
    check_name = _defined_name(source.cells[e.check].source)
    if stub_id in ids:
        start = ids.index(stub_id)
    else:
        found = [i for i, c in enumerate(student.cells) if c.cell_type == "code"
                 and _defined_name(c.source) == e.name and check_name not in c.source]
        if not found:
            return []
        start = found[0]
    cells = [student.cells[start]]
    for c in student.cells[start + 1:]:
        if c.get("id") in book_ids:
            break
        cells.append(c)
    return [c for c in cells if c.cell_type == "code"]


def _code(source: str, role: str, key: str | None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata[ROLE] = {"role": role, "exercise": key}
    return cell


def _grading_notebook(source: nbformat.NotebookNode, student: nbformat.NotebookNode,
                      exercises: list[Exercise], start: int) -> nbformat.NotebookNode:
    """The cells to run, from exercise ``start`` on; earlier exercises run the book's solution."""
    by_cell = {}
    for k, e in enumerate(exercises):
        by_cell.update({e.stub: (k, "stub"), e.check: (k, "check"), e.solution: (k, "solution")})
        by_cell.update({h: (k, "hidden") for h in e.hidden})
    last = max(max(e.solution, *e.hidden) if e.hidden else e.solution for e in exercises)
    cells = []
    for i, cell in enumerate(source.cells[: last + 1]):
        if cell.cell_type != "code":
            continue
        if i not in by_cell:
            cells.append(_code(cell.source, "context", None))
            continue
        k, kind = by_cell[i]
        e = exercises[k]
        if k < start:  # an exercise already graded: the book's solution keeps later cells working
            if kind == "solution":
                cells.append(_code(cell.source, "context", None))
        elif kind == "stub":
            cells += [_code(c.source, "answer", e.key) for c in _answer_cells(student, e, source)]
            for j in (e.check, *e.hidden):  # hidden tests run right after the check, before the solution
                graded = _code(source.cells[j].source, "graded", e.key)
                graded.metadata["nbgrader"] = {"grade": True, "solution": False, "points": e.points,
                                               "grade_id": f"{e.key}-{j}", "locked": True}
                cells.append(graded)
        elif kind == "solution":
            cells.append(_code(cell.source, "solution", e.key))
    return nbformat.v4.new_notebook(cells=cells, metadata=source.metadata)


def _execute(nb: nbformat.NotebookNode, cwd: Path, limit: float, setup_limit: float) -> tuple[int, str] | None:
    """Run ``nb`` in a fresh kernel; where it stopped early (cell index, why), or None."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    def timeout(cell: nbformat.NotebookNode) -> int:
        student = cell.metadata.get(ROLE, {}).get("role") in ("answer", "graded")
        return int(max(1, limit if student else setup_limit))

    client = NotebookClient(nb, timeout_func=timeout, kernel_name="python3", allow_errors=True,
                            shutdown_kernel="immediate", resources={"metadata": {"path": str(cwd)}})
    # the kernel's own log lines (TCP warnings, a student's stray prints to fd 2) stay out of the grader's output
    with client.setup_kernel(stderr=subprocess.DEVNULL, cwd=str(cwd)):
        for i, cell in enumerate(nb.cells):
            try:
                client.execute_cell(cell, i)
            except CellTimeoutError:
                return i, f"timed out after {timeout(cell)} s"
            except DeadKernelError:
                return i, "the kernel died"
    return None


def grade_chapter(source_path: str | Path, student: nbformat.NotebookNode, limit: float = 60.0,
                  setup_limit: float = 900.0) -> ChapterGrade:
    """Grade one student's copy of the chapter at ``source_path`` (the book's own notebook)."""
    source_path = Path(source_path)
    source = read_chapter(source_path)
    chapter = chapter_number(source_path)
    exercises = chapter_exercises(source, chapter)
    grade = ChapterGrade(points={e.key: 0.0 for e in exercises})
    with tempfile.TemporaryDirectory(prefix="deltalearn-grade-") as workdir:
        _grade_runs(source_path, source, student, exercises, grade, Path(workdir), limit, setup_limit)
    return grade


def _grade_runs(source_path: Path, source: nbformat.NotebookNode, student: nbformat.NotebookNode,
                exercises: list[Exercise], grade: ChapterGrade, workdir: Path, limit: float,
                setup_limit: float) -> None:
    """Run the grading notebook from the first exercise on, again after each exercise that stopped
    the kernel, and fill ``grade`` in."""
    from nbgrader.utils import determine_grade

    start = 0
    while start < len(exercises):
        nb = _grading_notebook(source, student, exercises, start)
        stopped = _execute(nb, workdir, limit, setup_limit)
        stop = stopped[0] if stopped else len(nb.cells)
        ran: dict[str, list[bool]] = {}
        for cell in nb.cells[:stop]:
            meta = cell.metadata[ROLE]
            if meta["role"] == "graded":
                got, most = determine_grade(cell)
                ran.setdefault(meta["exercise"], []).append(got is not None and got >= most)
        keys = [e.key for e in exercises]
        for key, ok in ran.items():
            e = exercises[keys.index(key)]
            complete = len(ok) == 1 + len(e.hidden)
            grade.points[key] = e.points if complete and all(ok) else 0.0
        if stopped is None:
            break
        meta = nb.cells[stop].metadata[ROLE]
        if meta["exercise"] is None:  # the book's own code failed, not the student's
            grade.notes.append(f"{source_path.name}: the chapter's code stopped ({stopped[1]}); "
                               f"exercises after {keys[start - 1] if start else 'the first'} not graded")
            break
        after = "the book's solution after " if meta["role"] == "solution" else ""
        grade.notes.append(f"{source_path.name}: {after}exercise {meta['exercise']} {stopped[1]}")
        start = keys.index(meta["exercise"]) + 1


def _read_submission(path: Path) -> nbformat.NotebookNode:
    """A submitted notebook, or ValueError with one line saying why it cannot be graded."""
    try:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validator.normalize(nb)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line in the gradebook
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ValueError(f"{path.name}: not a readable notebook ({type(e).__name__}: {first})") from None
    if not isinstance(nb.get("cells"), list):
        raise ValueError(f"{path.name}: not a readable notebook (no cells)")
    return nb


def grade_submissions(book_dir: str | Path, submissions_dir: str | Path, out_csv: str | Path,
                      limit: float = 60.0, setup_limit: float = 900.0) -> list[dict[str, object]]:
    """Grade every student folder of ``submissions_dir`` and write one CSV row per student.

    A student folder holds chapter notebooks under their book names (``03_counting.ipynb``).
    The columns are ``student``, one per exercise of every chapter anyone submitted, ``total``
    and ``notes`` (a missing or unreadable notebook, an exercise that timed out).
    """
    book, subs = Path(book_dir), Path(submissions_dir)
    if not subs.is_dir():
        raise ValueError(f"SUBMISSIONS_DIR {subs} is not a folder")
    chapters = {p.name: p for p in sorted(book.glob("[0-9][0-9]_*.ipynb"))}
    students = sorted(d for d in subs.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not students:
        raise ValueError(f"no student folders in {subs}")
    submitted = sorted({p.name for d in students for p in d.glob("*.ipynb")} & set(chapters))
    if not submitted:
        raise ValueError(f"no student folder in {subs} holds a chapter notebook ({', '.join(chapters)})")
    keys = {name: [e.key for e in chapter_exercises(read_chapter(chapters[name]), chapter_number(name))]
            for name in submitted}
    rows = []
    for d in students:
        row: dict[str, object] = {"student": d.name}
        notes: list[str] = []
        for name in submitted:
            row.update({k: 0.0 for k in keys[name]})
            path = d / name
            if not path.exists():
                notes.append(f"{name}: not submitted")
                continue
            try:
                g = grade_chapter(chapters[name], _read_submission(path), limit, setup_limit)
            except ValueError as e:
                notes.append(str(e))
                continue
            row.update(g.points)
            notes += g.notes
        row["total"] = sum(float(row[k]) for name in submitted for k in keys[name])
        row["notes"] = "; ".join(notes)
        rows.append(row)
    columns = ["student", *[k for name in submitted for k in keys[name]], "total", "notes"]
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return rows
