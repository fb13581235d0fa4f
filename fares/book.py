"""Tariffs by version: re-pricing a tap with the tariff its terminal priced it with.

A terminal writes the version of its tariff into every tap (``FareInfo.tariff_version``); the
clearing centre, which recomputes tap-off refunds itself (``fares.refund``), looks the tariff up
here. A book is loaded from a directory holding one tariff directory per version, or built from
tariffs already loaded; one version names exactly one tariff.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from fares.errors import TariffError, TariffProblem, UnknownTariffVersion
from fares.loader import E_MISSING_FILE, load_tariff
from fares.tariff import Tariff

E_DUPLICATE_VERSION: Final = "E_TARIFF_DUPLICATE_VERSION"


class TariffBook(Mapping[str, Tariff]):
    """A read-only mapping ``version -> Tariff``.

    ``book[version]`` raises ``UnknownTariffVersion`` (a ``FareError`` with code
    ``E_FARE_UNKNOWN_TARIFF_VERSION``, and a ``KeyError``) for a version it does not hold.
    Two different tariffs with the same version are refused with a ``TariffError``
    (``E_TARIFF_DUPLICATE_VERSION``); the same tariff object given twice is kept once.
    """

    __slots__ = ("_by_version",)

    def __init__(self, tariffs: Iterable[Tariff] = (), *, source: str = "<tariff book>") -> None:
        by_version: dict[str, Tariff] = {}
        problems: list[TariffProblem] = []
        for tariff in tariffs:
            other = by_version.get(tariff.version)
            if other is None:
                by_version[tariff.version] = tariff
            elif other is not tariff:
                problems.append(
                    TariffProblem(
                        E_DUPLICATE_VERSION,
                        tariff.source,
                        None,
                        None,
                        f"tariff version {tariff.version!r} is already {other.source}; one version, one tariff",
                    )
                )
        if problems:
            raise TariffError(source, tuple(problems))
        self._by_version: Mapping[str, Tariff] = MappingProxyType(by_version)

    def __getitem__(self, version: str) -> Tariff:
        try:
            return self._by_version[version]
        except KeyError:
            raise UnknownTariffVersion(version, self.versions) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_version)

    def __len__(self) -> int:
        return len(self._by_version)

    @property
    def versions(self) -> tuple[str, ...]:
        """The versions held, sorted."""
        return tuple(sorted(self._by_version))

    def __repr__(self) -> str:
        return f"TariffBook({list(self.versions)!r})"


def load_tariff_book(directory: str | os.PathLike[str]) -> TariffBook:
    """Load every tariff directory directly under ``directory`` (one per version; hidden
    directories and plain files are skipped) into a ``TariffBook``.

    The directory names are free: a tariff's version is its ``tariff_version`` setting or its
    content hash. Raises one ``TariffError`` listing the problems of every tariff that does not
    load (files named ``<subdirectory>/<file>``), or a duplicate version.
    """
    path = Path(directory)
    source = str(path)
    if not path.is_dir():
        raise TariffError(source, (TariffProblem(E_MISSING_FILE, source, None, None, "not a directory"),))
    subdirectories = sorted(entry for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not subdirectories:
        hint = ""
        if any((path / f"yikatong_codes{ext}").is_file() for ext in (".csv", ".txt")):
            hint = " (this is one tariff directory: load it with load_tariff, or move it into a subdirectory)"
        raise TariffError(
            source,
            (TariffProblem(E_MISSING_FILE, source, None, None, f"no tariff directories in it, one per version{hint}"),),
        )
    tariffs: list[Tariff] = []
    problems: list[TariffProblem] = []
    for subdirectory in subdirectories:
        try:
            tariffs.append(load_tariff(subdirectory))
        except TariffError as exc:
            problems.extend(
                TariffProblem(
                    problem.code,
                    problem.file if problem.file == str(subdirectory) else f"{subdirectory.name}/{problem.file}",
                    problem.line,
                    problem.column,
                    problem.message,
                )
                for problem in exc.problems
            )
    if problems:
        raise TariffError(source, tuple(problems))
    return TariffBook(tariffs, source=source)
