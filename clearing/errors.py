"""The one error of clearing: a stable code from the registry and a human sentence.

Every refusal — an API answer, a ledger refusal, an exception-queue decision, a key store
fault, an issuance mistake — is a ``ClearingError``. The code comes from
``clearing.contract.codes.Code`` (the one registry, also used in record verdicts), so API
bodies, log lines, CLI errors and exception items say the same thing:
``E_TAC_MISMATCH: TAC does not verify for card 3104…, counter 17``. The HTTP status is the
code's (``CODES``) unless the raiser knows better. Messages never carry key material or a
citizen's personal data.
"""

from __future__ import annotations

from collections.abc import Sequence

from clearing.contract.codes import Code, status_of
from clearing.contract.schemas import ErrorItem


class ClearingError(Exception):
    """A refused operation: ``code`` (stable), ``message`` (a sentence), optional per-field ``errors``."""

    def __init__(
        self, code: Code, message: str, *, errors: Sequence[ErrorItem] = (), status: int | None = None
    ) -> None:
        assert isinstance(code, Code), f"error codes come from the registry, got {code!r}"
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.errors = list(errors)
        self._status = status

    @property
    def status(self) -> int:
        """The HTTP status an API answers this error with."""
        return self._status if self._status is not None else status_of(self.code)

    def __reduce__(self) -> tuple[object, ...]:  # survives pickling (worker processes)
        return (_rebuild, (self.code.value, self.message, self._status))


def _rebuild(code: str, message: str, status: int | None) -> ClearingError:
    return ClearingError(Code(code), message, status=status)


__all__ = ["ClearingError", "Code"]
