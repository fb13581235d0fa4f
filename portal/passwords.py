"""Citizen passwords: the policy, and argon2id hashing (argon2-cffi) with rehash-on-login.

Issue 10, "Account": passwords are stored as argon2id. ``PasswordHasher()`` of argon2-cffi
defaults to argon2id with RFC 9106's low-memory profile (t=3, m=64 MiB, p=4); tests pass a
cheap hasher. A stored hash made with weaker parameters is replaced at the next good login
(``check_needs_rehash``), so raising the parameters needs no migration.

The policy (``docs/portal.md``, "Accounts") is deliberately short, after NIST SP 800-63B:
8 to 128 characters (any Unicode; a passphrase is welcome), not only digits (a birthday or
the mobile number itself). No composition rules: they push people to ``Password1!``.

``dummy_verify`` spends the same work on an unknown mobile number as on a known one, so the
answer time of a failed login does not tell which numbers hold an account.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Final

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from portal.errors import Code, PortalError

PASSWORD_CHARS_MIN: Final = 8
PASSWORD_CHARS_MAX: Final = 128  # argon2 takes any length; this bounds the work a request can ask for


def check_policy(password: str) -> str:
    """The password if it may be used (``E_PASSWORD_POLICY`` otherwise). Never echoes the password."""
    if not PASSWORD_CHARS_MIN <= len(password) <= PASSWORD_CHARS_MAX:
        raise PortalError(
            Code.E_PASSWORD_POLICY, f"a password has {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters"
        )
    if password.isascii() and password.isdigit():
        raise PortalError(Code.E_PASSWORD_POLICY, "a password of digits only is too easy to guess")
    if "\x00" in password:
        raise PortalError(Code.E_PASSWORD_POLICY, "a password holds no NUL character")
    return password


@dataclass
class Passwords:
    """argon2id hashing; ``hasher`` may be a cheaper one in tests (it must stay argon2id)."""

    hasher: PasswordHasher = field(default_factory=PasswordHasher)
    _dummy: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.hasher.type is not Type.ID:
            raise ValueError("citizen passwords are hashed with argon2id")
        self._dummy = self.hasher.hash("not a password of anyone")

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored: str, password: str) -> tuple[bool, str | None]:
        """(matches, a new hash to store when the stored one has outdated parameters)."""
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, None
        return True, self.hasher.hash(password) if self.hasher.check_needs_rehash(stored) else None

    def dummy_verify(self, password: str) -> None:
        """The work of one verify, for a login whose mobile number has no account."""
        with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
            self.hasher.verify(self._dummy, password)


__all__ = ["PASSWORD_CHARS_MAX", "PASSWORD_CHARS_MIN", "Passwords", "check_policy"]
