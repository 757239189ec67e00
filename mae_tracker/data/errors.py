"""The one exception the data layer raises for bad input."""

from __future__ import annotations

from os import PathLike


class DataError(ValueError):
    """Bad input data: a one-line message that names the file and the problem.

    The CLI turns it into ``Error: <file>: <problem>`` and a non-zero exit, no traceback.
    """

    def __init__(self, path: str | PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")
