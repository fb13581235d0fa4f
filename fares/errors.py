"""Errors of the fare engine: a bad tariff file, and a tap that cannot be priced.

Both carry stable codes and a human sentence (STYLE.md, "Errors carry a stable code").
A tariff is checked whole before it is used, so ``TariffError`` lists every problem found,
each with its file, line and column, instead of stopping at the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PROBLEMS_SHOWN_MAX: Final = 50  # a broken file can give thousands; the message shows the first ones


@dataclass(frozen=True, slots=True)
class TariffProblem:
    """One thing wrong in one place of a tariff directory.

    ``line`` counts like an editor does: the header is line 1, the first data row line 2.
    ``line`` and ``column`` are None when the problem is about a whole file or table.
    """

    code: str
    file: str
    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f" line {self.line}"
        if self.column is not None:
            where += f", column {self.column}"
        return f"{self.code}: {where}: {self.message}"


class TariffError(ValueError):
    """A tariff directory that does not load; ``problems`` says every reason found."""

    def __init__(self, source: str, problems: tuple[TariffProblem, ...]) -> None:
        assert problems, "a TariffError needs at least one problem"
        shown = "\n".join(f"  {problem}" for problem in problems[:PROBLEMS_SHOWN_MAX])
        more = len(problems) - PROBLEMS_SHOWN_MAX
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"tariff {source} does not load ({len(problems)} problem(s)):\n{shown}{tail}")
        self.source = source
        self.problems = problems

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(problem.code for problem in self.problems)


class FareError(ValueError):
    """A tap the engine cannot price; ``code`` is one of the ``E_FARE_*`` constants below."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


E_FARE_NAIVE_TIME: Final = "E_FARE_NAIVE_TIME"
E_FARE_UNKNOWN_ROUTE: Final = "E_FARE_UNKNOWN_ROUTE"
E_FARE_UNKNOWN_STOP: Final = "E_FARE_UNKNOWN_STOP"
E_FARE_UNKNOWN_CATEGORY: Final = "E_FARE_UNKNOWN_CATEGORY"
E_FARE_NO_RULE: Final = "E_FARE_NO_RULE"
E_FARE_NO_ENTRY: Final = "E_FARE_NO_ENTRY"
E_FARE_UNKNOWN_TARIFF_VERSION: Final = "E_FARE_UNKNOWN_TARIFF_VERSION"


class UnknownTariffVersion(FareError, KeyError):
    """A ``TariffBook`` has no tariff of this version (``code`` is ``E_FARE_UNKNOWN_TARIFF_VERSION``).

    Also a ``KeyError``, so that the book is a well-behaved ``Mapping``: ``version in book`` and
    ``book.get(version)`` work as for a dict, and ``book[version]`` says which versions it has.
    """

    def __init__(self, version: str, known: tuple[str, ...]) -> None:
        listed = ", ".join(repr(name) for name in known) if known else "none"
        message = f"tariff version {version!r} is not in the tariff book (it has {listed})"
        FareError.__init__(self, E_FARE_UNKNOWN_TARIFF_VERSION, message)
        self.version = version

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return f"{self.code}: {self.message}"
