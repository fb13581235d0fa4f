"""Terminal errors, typed by layer (STYLE.md, the Keyple row).

* ``CardRemoved``: the card left the field, was torn, or never answered. For a tap the
  outcome of the command in flight is unknown; the session turns that into "tap again"
  and, past the point of no return, into a pending torn tap (``epurse-public-sources.md``
  section 8).
* ``ReaderError``: the reader itself failed (PC/SC error, missed deadline, no reader).
* ``CardRefused(sw, what)``: the card (or PSAM) answered with a status word the step
  did not expect.

Every error carries a stable ``code`` and a human sentence, as STYLE.md asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from clearing.contract import TapRecord


class TerminalError(Exception):
    """Base of every error a terminal raises on purpose."""

    code: ClassVar[str] = "E_TERMINAL"

    def __init__(self, message: str) -> None:
        super().__init__(f"{self.code}: {message}")
        self.message = message


class CardRemoved(TerminalError):
    """The card is gone: removed, torn, or silent. The command in flight may or may not have run."""

    code: ClassVar[str] = "E_CARD_REMOVED"


class ReaderError(TerminalError):
    """The reader failed (PC/SC error, deadline missed, reader missing)."""

    code: ClassVar[str] = "E_READER"


class CardRefused(TerminalError):
    """An unexpected status word; ``what`` names the command (``"DEBIT FOR CAPP PURCHASE"``)."""

    code: ClassVar[str] = "E_CARD_REFUSED"

    def __init__(self, sw: int, what: str, detail: str = "") -> None:
        super().__init__(f"{what} answered {sw:04X}" + (f" ({detail})" if detail else ""))
        self.sw = sw
        self.what = what


class JournalError(TerminalError):
    """The journal's contents break an invariant (e.g. a terminal sequence seen twice)."""

    code: ClassVar[str] = "E_JOURNAL"


class UploadError(TerminalError):
    """An upload the retry loop must not retry: bad token, batch conflict, malformed answer."""

    code: ClassVar[str] = "E_UPLOAD"

    def __init__(self, message: str, status_code: int | None = None, error_code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code


class DuplicateCardRecord(TerminalError):
    """The card signed a record under a (card, offline counter, type) this journal already holds.

    A genuine card never repeats an offline counter (``card-profile.md``, "Atomicity and
    tear"), so this is a copy of a card image (a clone) or a rolled-back one: a fact about the
    card, never a reason to stop the terminal. Raised by ``Journal.append`` after the record
    was kept, with the one already journaled, as fraud event ``fraud_id``.
    """

    code: ClassVar[str] = "E_DUPLICATE_CARD_COUNTER"

    def __init__(self, message: str, *, fraud_id: int, earlier: TapRecord) -> None:
        super().__init__(message)
        self.fraud_id = fraud_id
        self.earlier = earlier
