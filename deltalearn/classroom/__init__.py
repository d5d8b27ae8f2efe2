"""The classroom edition: a student version of the book and an autograder for its exercises.

``deltalearn classroom student OUT_DIR`` and ``deltalearn classroom grade SUBMISSIONS_DIR``
call these. Built on nbgrader's cell model (solution, locked and grade cells) and its grading
rule; see ``exercises`` for how the book's cells map onto it.
"""
from .exercises import (HIDDEN_TEST_TAG, MODEL_ANSWER_TAG, Exercise, chapter_exercises, chapter_number,
                        exercise_heading, read_chapter)
from .grade import ChapterGrade, grade_chapter, grade_submissions
from .student import student_notebook, write_student_version

__all__ = ["HIDDEN_TEST_TAG", "MODEL_ANSWER_TAG", "ChapterGrade", "Exercise", "chapter_exercises", "chapter_number",
           "exercise_heading",
           "grade_chapter", "grade_submissions", "read_chapter", "student_notebook", "write_student_version"]
