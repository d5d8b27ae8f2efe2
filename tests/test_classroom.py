"""The classroom edition: the student version hides every solution, and the grader scores
exercises one by one (a wrong, looping or unreadable answer costs only what it should)."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import nbformat
import pytest

from deltalearn.classroom import (HIDDEN_TEST_TAG, chapter_exercises, chapter_number, grade_submissions,
                                  read_chapter, student_notebook)
from deltalearn.cli import main

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
SHORT = BOOK / "01_introduction.ipynb"  # the end-to-end tests grade this chapter: it runs in seconds
LIMIT = 15.0  # seconds per student cell in these tests; the looping answer must be stopped by it


def _body(source: str) -> str:
    """A solution's code without its ``def`` line, docstring, comments and closing check call."""
    keep = [ln.strip() for ln in source.splitlines()[1:]
            if ln.strip() and not ln.strip().startswith(("#", '"""', "check_")) and "NotImplementedError" not in ln]
    return "\n".join(keep)


def _output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_student_version_has_no_solution_code_output_or_hidden_test(path: Path) -> None:
    book = read_chapter(path)
    exercises = chapter_exercises(book, chapter_number(path))
    student = student_notebook(book, chapter_number(path))
    text = "\n".join(ln.strip() for c in student.cells for ln in c.source.splitlines())
    kept = {c.id: c for c in student.cells}
    for e in exercises:
        sol = book.cells[e.solution]
        assert sol.id not in kept and _body(sol.source) not in text, f"{path.name} {e.key}: solution left in"
        assert kept[book.cells[e.stub].id].source == book.cells[e.stub].source  # the stub, unchanged
        assert kept[book.cells[e.check].id].source == book.cells[e.check].source  # the visible check
        for h in e.hidden:
            assert book.cells[h].id not in kept and _body(book.cells[h].source) not in text
    assert not any(HIDDEN_TEST_TAG in c.metadata.get("tags", []) for c in student.cells)
    first = [c.id for c in student.cells].index(book.cells[exercises[0].stub].id)
    assert not [c.id for c in student.cells[first:] if c.get("outputs")], f"{path.name}: outputs after the exercises"
    # what a solution cell printed (the answer without the code) appears in no output
    shown = "\n".join(_output_text(c) for c in student.cells)
    for e in exercises:
        for line in _output_text(book.cells[e.solution]).splitlines():
            assert len(line.strip()) < 12 or line.strip() not in shown, f"{path.name} {e.key}: {line!r} shown"


def test_every_chapter_has_graded_exercises() -> None:
    counts = {p.name: len(chapter_exercises(read_chapter(p), chapter_number(p))) for p in CHAPTERS}
    assert all(n >= 1 for n in counts.values()), counts


def _submission(book: nbformat.NotebookNode, answers: dict[str, str]) -> nbformat.NotebookNode:
    """The student version with the book's solutions written into the stubs, except ``answers``
    (exercise key -> source) which replace those exercises' stubs."""
    exercises = chapter_exercises(book, chapter_number(SHORT))
    nb = student_notebook(book, chapter_number(SHORT))
    cells = {c.id: c for c in nb.cells}
    for e in exercises:
        cells[book.cells[e.stub].id].source = answers.get(e.key, book.cells[e.solution].source)
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, str]], float]:
    book = read_chapter(SHORT)
    student = student_notebook(book, 1)
    stub = {e.key: book.cells[e.stub].source for e in chapter_exercises(book, 1)}
    subs = tmp_path_factory.mktemp("submissions")
    notebooks = {
        "solved": _submission(book, {}),
        "untouched": student,
        "wrong_1_3": _submission(book, {"1.3": stub["1.3"].replace(
            'raise NotImplementedError("Exercise 1.3")', "return 1.0 / sparsity")}),
        "library_1_2": _submission(book, {"1.2": stub["1.2"].replace(
            'raise NotImplementedError("Exercise 1.2")',
            "return dl.count_dense(dl.mlp_qnet(obs_dim, n_actions, hidden)).total_dense")}),
        "loop_1_1": _submission(book, {"1.1": stub["1.1"].replace(
            'raise NotImplementedError("Exercise 1.1")', "while True:\n        pass")}),
    }
    for name, nb in notebooks.items():
        (subs / name).mkdir()
        nbformat.write(nb, subs / name / SHORT.name)
    (subs / "absent").mkdir()  # handed in nothing
    (subs / "truncated").mkdir()
    text = nbformat.writes(notebooks["solved"])
    (subs / "truncated" / SHORT.name).write_text(text[: len(text) // 2])
    out = subs.parent / "grades.csv"
    started = time.monotonic()
    assert main(["classroom", "grade", str(subs), "--out", str(out), "--book", str(BOOK),
                 "--timeout", str(LIMIT)]) == 0
    elapsed = time.monotonic() - started
    with open(out, newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    return rows, elapsed


def test_grades_csv_has_one_row_per_student_and_a_column_per_exercise(graded) -> None:
    rows, _ = graded
    assert set(rows) == {"solved", "untouched", "wrong_1_3", "library_1_2", "loop_1_1", "truncated", "absent"}
    assert rows["absent"]["total"] == "0.0" and rows["absent"]["notes"] == f"{SHORT.name}: not submitted"
    assert list(next(iter(rows.values()))) == ["student", "1.1", "1.2", "1.3", "total", "notes"]


def test_solutions_get_full_marks_and_the_student_version_zero(graded) -> None:
    rows, _ = graded
    assert [rows["solved"][k] for k in ("1.1", "1.2", "1.3", "total")] == ["1.0", "1.0", "1.0", "3.0"]
    assert rows["solved"]["notes"] == ""
    assert [rows["untouched"][k] for k in ("1.1", "1.2", "1.3", "total")] == ["0.0", "0.0", "0.0", "0.0"]


def test_a_wrong_answer_loses_exactly_its_exercise(graded) -> None:
    rows, _ = graded
    assert [rows["wrong_1_3"][k] for k in ("1.1", "1.2", "1.3", "total")] == ["1.0", "1.0", "0.0", "2.0"]
    # the visible check accepts the library's count; the hidden test does not
    assert [rows["library_1_2"][k] for k in ("1.1", "1.2", "1.3", "total")] == ["1.0", "0.0", "1.0", "2.0"]


def test_an_infinite_loop_loses_only_its_exercise_within_the_limit(graded) -> None:
    rows, elapsed = graded
    assert [rows["loop_1_1"][k] for k in ("1.1", "1.2", "1.3", "total")] == ["0.0", "1.0", "1.0", "2.0"]
    assert "1.1 timed out" in rows["loop_1_1"]["notes"]
    assert elapsed < 8 * 60, f"grading seven students took {elapsed:.0f} s"


def test_a_truncated_notebook_gets_a_one_line_error(graded) -> None:
    rows, _ = graded
    row = rows["truncated"]
    assert row["total"] == "0.0" and "not a readable notebook" in row["notes"] and "\n" not in row["notes"]


def test_student_command_writes_every_chapter(tmp_path: Path) -> None:
    assert main(["classroom", "student", str(tmp_path / "out"), "--book", str(BOOK)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.ipynb")) == [p.name for p in CHAPTERS]
