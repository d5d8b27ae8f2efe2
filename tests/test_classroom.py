"""The classroom edition: the student version hides every solution, and the grader scores
exercises one by one (a wrong, looping or unreadable answer costs only what it should)."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import nbformat
import pytest

from deltalearn.classroom import (HIDDEN_TEST_TAG, MODEL_ANSWER_TAG, chapter_exercises, chapter_number,
                                  exercise_heading, grade_chapter, grade_submissions, read_chapter, student_notebook)
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


def _md(source: str, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_markdown_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _py(source: str, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def _exercise(n: int, m: int, name: str, body: str, check: str) -> list[nbformat.NotebookNode]:
    """An exercise as the book writes it: heading, stub, check (raises-exception), solution (hide-input)."""
    return [_md(f"### Exercise {n}.{m}: write {name}"),
            _py(f'def {name}(x):\n    raise NotImplementedError("Exercise {n}.{m}")'),
            _py(check, ("raises-exception",)),
            _py(f"def {name}(x):\n    {body}", ("hide-input",))]


def _open_question(n: int, m: int) -> list[nbformat.NotebookNode]:
    return [_md(f"### Exercise {n}.{m}: why?\n\nExplain."),
            _md("```{admonition} Model answer\n:class: dropdown\nBecause 42.\n```", (MODEL_ANSWER_TAG,))]


def _chapter(n: int, cells: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[_md(f"# {n}. A chapter"), _py("import os")] + cells)
    nbformat.validator.normalize(nb)
    return nb


def test_exercise_headings_give_the_keys_and_open_questions_keep_their_numbers() -> None:
    assert exercise_heading("## Exercises\n\n### Exercise 10.2: choose a setting") == (10, 2)
    assert exercise_heading("### Exercise 2: the old style") is None
    assert exercise_heading("See Exercise 6.2 above") is None  # a reference, not a heading
    nb = _chapter(10, _exercise(10, 1, "double", "return 2 * x", "assert double(2) == 4")
                  + _open_question(10, 2) + _exercise(10, 3, "triple", "return 3 * x", "assert triple(2) == 6"))
    assert [e.key for e in chapter_exercises(nb, chapter_number("book/10_six_games.ipynb"))] == ["10.1", "10.3"]
    # a heading that kept the old chapter number is found when the student version is built
    with pytest.raises(ValueError, match="chapter 10 .*headed Exercise 9.1; number it Exercise 10.1"):
        chapter_exercises(_chapter(10, _exercise(9, 1, "double", "return 2 * x", "assert double(2) == 4")), 10)
    twice = _exercise(4, 1, "double", "return 2 * x", "assert double(2) == 4") + [_md("More.")]
    twice += _exercise(4, 1, "triple", "return 3 * x", "assert triple(2) == 6")
    with pytest.raises(ValueError, match="two code exercises are numbered 4.1"):
        chapter_exercises(_chapter(4, twice), 4)
    # unnumbered headings: the code exercises are counted
    old = _chapter(4, _exercise(4, 1, "double", "return 2 * x", "assert double(2) == 4"))
    old.cells[2].source = "### Exercise 1: the old style"
    assert [e.key for e in chapter_exercises(old, 4)] == ["4.1"]


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_student_version_drops_every_model_answer(path: Path) -> None:
    book = read_chapter(path)
    student = student_notebook(book, chapter_number(path))
    answers = [c.id for c in book.cells if MODEL_ANSWER_TAG in c.metadata.get("tags", [])]
    kept = {c.id for c in student.cells}
    assert not kept & set(answers), f"{path.name}: model answers left in the student version"
    assert len(student.cells) == len(book.cells) - len(answers) - sum(
        1 + len(e.hidden) for e in chapter_exercises(book, chapter_number(path)))


def test_student_version_of_a_chapter_with_open_questions() -> None:
    nb = _chapter(7, _exercise(7, 1, "double", "return 2 * x", "assert double(2) == 4") + _open_question(7, 2))
    student = student_notebook(nb, 7)
    text = "\n".join(c.source for c in student.cells)
    assert "### Exercise 7.2: why?" in text and "Because 42" not in text and "return 2 * x" not in text
    assert not any(MODEL_ANSWER_TAG in c.metadata.get("tags", []) for c in student.cells)


def test_the_grader_runs_a_chapter_in_an_empty_folder_not_the_book(tmp_path: Path) -> None:
    book = tmp_path / "book"
    book.mkdir()
    # the check passes only where a downloaded chapter runs: a fresh folder, not the book's
    check = ("from pathlib import Path\nassert double(2) == 4\n"
             "assert not Path('10_tiny.ipynb').exists() and Path.cwd().name.startswith('deltalearn-grade-')")
    nb = _chapter(10, _exercise(10, 1, "double", "return 2 * x", check) + _open_question(10, 2))
    nb.cells.insert(2, _py("open('stray.txt', 'w').write('a student file')"))
    nbformat.write(nb, book / "10_tiny.ipynb")
    source = read_chapter(book / "10_tiny.ipynb")
    solved = student_notebook(source, 10)
    stub = next(c for c in solved.cells if "NotImplementedError" in c.source)
    stub.source = "def double(x):\n    return x + x"
    grade = grade_chapter(book / "10_tiny.ipynb", solved, limit=LIMIT, setup_limit=60)
    assert grade.points == {"10.1": 1.0} and grade.notes == []
    assert grade_chapter(book / "10_tiny.ipynb", student_notebook(source, 10), limit=LIMIT).points == {"10.1": 0.0}
    assert sorted(p.name for p in book.iterdir()) == ["10_tiny.ipynb"], "the kernel wrote into the book folder"
