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

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, ClassVar, Generic, TypeVar

from clearing.contract.codes import CODES, Code
from clearing.contract.schemas import ErrorItem

E = TypeVar("E", bound=Enum)


class CodedError(Exception, Generic[E]):
    """The shape of every package's error: a stable ``code`` from its registry and a ``message``.

    Each package keeps its own registry (its API's shapes are its own); this base is the one
    place for what they share: ``str()`` is ``CODE: sentence``, the HTTP status is the code's
    unless the raiser knows better, and the error survives pickling (worker processes).
    """

    code_type: ClassVar[type[Enum]]
    statuses: ClassVar[Mapping[Any, Any]]  # code -> info with ``.status``

    def __init__(self, code: E, message: str, *, status: int | None = None) -> None:
        assert isinstance(code, self.code_type), f"error codes come from the registry, got {code!r}"
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self._status = status

    @property
    def status(self) -> int:
        """The HTTP status an API answers this error with."""
        return self._status if self._status is not None else int(self.statuses[self.code].status)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.code.value, self.message, self._status))


def _rebuild(cls: type[CodedError[Any]], code: str, message: str, status: int | None) -> CodedError[Any]:
    return cls(cls.code_type(code), message, status=status)


class ClearingError(CodedError[Code]):
    """A refused operation: ``code`` (stable), ``message`` (a sentence), optional per-field ``errors``."""

    code_type = Code
    statuses = CODES

    def __init__(
        self, code: Code, message: str, *, errors: Sequence[ErrorItem] = (), status: int | None = None
    ) -> None:
        super().__init__(code, message, status=status)
        self.errors = list(errors)


__all__ = ["ClearingError", "Code", "CodedError"]
