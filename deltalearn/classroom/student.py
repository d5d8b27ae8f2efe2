"""The student version of the book: stubs and visible checks, no solutions, no hidden tests."""
from __future__ import annotations

from pathlib import Path

import nbformat

from .exercises import MODEL_ANSWER_TAG, chapter_exercises, chapter_number, read_chapter

__all__ = ["student_notebook", "write_student_version"]


def _nbgrader_meta(kind: str, key: str, points: float = 0.0) -> dict:
    """nbgrader's cell metadata: a stub is a solution cell, a check a locked grade cell."""
    if kind == "stub":
        return {"grade": False, "solution": True, "locked": False, "grade_id": f"ex{key}", "schema_version": 3}
    return {"grade": True, "solution": False, "locked": True, "grade_id": f"check{key}",
            "points": points, "schema_version": 3}


def student_notebook(nb: nbformat.NotebookNode, chapter: int) -> nbformat.NotebookNode:
    """A copy of a chapter for students.

    Solution and hidden-test cells are dropped, and so are model answers (cells tagged
    ``model-answer``: the dropdown text and any hidden cell computing its numbers), which the web
    book shows behind a click. Every output from the first stub on is cleared,
    because a later cell may print what a solution computes (the answer without the code).
    Outputs before the exercises stay: they are the chapter's text, and no solution has run yet.
    """
    from nbgrader.preprocessors import ClearOutput

    exercises = chapter_exercises(nb, chapter)
    drop = {e.solution for e in exercises} | {h for e in exercises for h in e.hidden}
    drop |= {i for i, c in enumerate(nb.cells) if MODEL_ANSWER_TAG in c.get("metadata", {}).get("tags", [])}
    first = min((e.stub for e in exercises), default=len(nb.cells))
    roles = {e.stub: ("stub", e) for e in exercises} | {e.check: ("check", e) for e in exercises}
    clear = ClearOutput()
    out = nbformat.from_dict(nb)
    cells = []
    for i, cell in enumerate(out.cells):
        if i in drop:
            continue
        if i >= first and cell.cell_type == "code":
            cell, _ = clear.preprocess_cell(cell, {}, i)
        if i in roles:
            kind, e = roles[i]
            cell.metadata["nbgrader"] = _nbgrader_meta(kind, e.key, e.points)
        cells.append(cell)
    out.cells = cells
    return out


def write_student_version(book_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the student version of every chapter ``NN_*.ipynb`` of ``book_dir`` into ``out_dir``.

    Only the notebooks are written: a chapter reads its data through the library.
    """
    book, out = Path(book_dir), Path(out_dir)
    chapters = sorted(book.glob("[0-9][0-9]_*.ipynb"))
    if not chapters:
        raise ValueError(f"no chapter notebooks NN_*.ipynb in {book}")
    if out.resolve() == book.resolve():
        raise ValueError(f"OUT_DIR must differ from the book folder {book}: the student version would replace it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in chapters:
        nb = student_notebook(read_chapter(path), chapter_number(path))
        target = out / path.name
        target.write_text(nbformat.writes(nb) + ("" if nbformat.writes(nb).endswith("\n") else "\n"))
        written.append(target)
    return written
