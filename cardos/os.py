"""The card OS core shared by the user card and the PSAM.

* An INS -> handler table built from methods marked with ``@command`` (vsmartcard style).
* Status words: handlers raise ``StatusError``; ``transmit`` turns it into SW1 SW2 here, once.
* Atomicity (``card-profile.md``, "Atomicity and tear"): a handler never mutates persistent
  state directly. It computes its answer and ``stage()``s the changes; they are applied
  together at the commit point after the handler returns, then persisted. A tear before the
  commit point leaves the old state; a tear after it loses only the response.
* Volatile state (selected application, open sessions, challenges) dies with power.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, TypeVar

from cardos.apdu import Command, parse_command
from cardos.sw import SW_CLA_NOT_SUPPORTED, SW_CONDITIONS_NOT_SATISFIED, SW_INS_NOT_SUPPORTED, SW_OK, StatusError

Handler = Callable[[Command], bytes]
F = TypeVar("F", bound=Callable[..., bytes])


class CardTorn(Exception):
    """Power was cut (tear injection, or the card left the field) during this APDU."""


class SmartCard(Protocol):
    """What a reader needs of a card: power and APDU exchange."""

    def power_on(self) -> bytes: ...

    def power_off(self) -> None: ...

    def transmit(self, apdu: bytes) -> bytes: ...


@dataclass(slots=True)
class TearPlan:
    """Cut power at the ``at_apdu``-th APDU after power-on (1-based).

    ``phase="before_commit"``: that APDU's changes are lost (a card pulled away mid-write).
    ``phase="after_commit"``: its changes are committed but the response never leaves.
    """

    at_apdu: int
    phase: Literal["before_commit", "after_commit"] = "before_commit"


def command(ins: int, cla: int | None = None) -> Callable[[F], F]:
    """Mark a method as the handler of INS (optionally only for one CLA)."""

    def mark(fn: F) -> F:
        fn._cardos_command = (cla, ins)  # type: ignore[attr-defined]
        return fn

    return mark


class CardOS:
    """Base class: dispatch, power, staged commit and tear injection."""

    ATR: ClassVar[bytes] = bytes.fromhex("3B8880010000000000000000")
    _table: ClassVar[dict[tuple[int | None, int], str]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[tuple[int | None, int], str] = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                key = getattr(member, "_cardos_command", None)
                if key is not None:
                    table[key] = name
        cls._table = table

    def __init__(self) -> None:
        self.powered = False
        self.tear: TearPlan | None = None
        self.apdu_index = 0
        self._staged: list[Callable[[], None]] = []
        self._staged_even_if_refused: list[Callable[[], None]] = []

    # --- power ------------------------------------------------------------------------
    def power_on(self) -> bytes:
        self.powered = True
        self.apdu_index = 0
        self._staged.clear()
        self.reset_volatile()
        return self.ATR

    def power_off(self) -> None:
        self.powered = False
        self._staged.clear()
        self.reset_volatile()

    def reset_volatile(self) -> None:
        """Forget everything that does not survive power loss. Subclasses extend."""

    # --- commit -----------------------------------------------------------------------
    def stage(self, change: Callable[[], None], *, even_if_refused: bool = False) -> None:
        """Queue a persistent-state change for this APDU's commit point.

        ``even_if_refused=True`` keeps the change when the handler then raises
        ``StatusError``: a failed PIN try must cost a try (``card-profile.md``).
        """
        self._staged.append(change)
        if even_if_refused:
            self._staged_even_if_refused.append(change)

    def persist(self) -> None:
        """Write the committed state (card image). Subclasses with storage override."""

    def _commit(self) -> None:
        if not self._staged:
            return
        changes, self._staged = self._staged, []
        for change in changes:
            change()
        self.persist()

    # --- APDU exchange ------------------------------------------------------------------
    def _handler(self, cmd: Command) -> Handler:
        name = self._table.get((cmd.cla, cmd.ins)) or self._table.get((None, cmd.ins))
        if name is None:
            if any(ins == cmd.ins for _, ins in self._table):
                raise StatusError(SW_CLA_NOT_SUPPORTED, f"CLA {cmd.cla:02X} not supported for INS {cmd.ins:02X}")
            raise StatusError(SW_INS_NOT_SUPPORTED, f"INS {cmd.ins:02X} not supported")
        handler: Handler = getattr(self, name)
        return handler

    def transmit(self, apdu: bytes) -> bytes:
        """Process one APDU and return response data || SW1 SW2.

        Never raises for bad input; raises ``CardTorn`` only when a tear is injected.
        """
        if not self.powered:
            raise CardTorn("card is not powered")
        self.apdu_index += 1
        self._staged.clear()
        self._staged_even_if_refused.clear()
        try:
            cmd = parse_command(bytes(apdu))
            data = self._handler(cmd)(cmd)
            sw = SW_OK
        except StatusError as exc:
            # a refused command changes nothing, except what it staged even_if_refused
            self._staged, self._staged_even_if_refused = self._staged_even_if_refused, []
            data, sw = exc.data, exc.sw
        except (ValueError, IndexError, KeyError, OverflowError) as exc:  # defensive: never crash
            self._staged.clear()
            data, sw = b"", SW_CONDITIONS_NOT_SATISFIED
            self.on_internal_error(exc)
        tear = self.tear
        if tear is not None and tear.at_apdu == self.apdu_index:
            self.tear = None
            if tear.phase == "after_commit":
                self._commit()
            self.power_off()
            raise CardTorn(f"power cut at APDU {self.apdu_index} ({tear.phase})")
        self._commit()
        return data + sw.to_bytes(2, "big")

    def on_internal_error(self, exc: Exception) -> None:
        """Hook for tests to see handler bugs that were turned into 6985."""
