"""ISO 7816-4 command APDU parsing (short and extended cases) and response building.

Parsing is strict: every malformed byte string raises ``StatusError(SW_WRONG_LENGTH)``
so a card never crashes on what a reader sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cardos.sw import SW_WRONG_LENGTH, StatusError


@dataclass(frozen=True, slots=True)
class Command:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # None: no Le field; 0 in a short APDU means 256

    @property
    def ne(self) -> int:
        """Maximum expected response length (0 when Le is absent)."""
        return 0 if self.le is None else self.le

    def to_bytes(self) -> bytes:
        head = bytes([self.cla, self.ins, self.p1, self.p2])
        body = b""
        if self.data:
            body += bytes([len(self.data)]) + self.data
        if self.le is not None:
            body += bytes([self.le & 0xFF])
        return head + body


def parse_command(raw: bytes) -> Command:
    """Parse cases 1–4, short or extended length, refusing anything else."""
    n = len(raw)
    if n < 4:
        raise StatusError(SW_WRONG_LENGTH, "APDU shorter than its header")
    cla, ins, p1, p2 = raw[0], raw[1], raw[2], raw[3]
    body = raw[4:]
    if not body:
        return Command(cla, ins, p1, p2)
    if len(body) == 1:
        return Command(cla, ins, p1, p2, b"", body[0] or 256)
    if body[0] != 0:
        lc = body[0]
        if len(body) == 1 + lc:
            return Command(cla, ins, p1, p2, bytes(body[1:]))
        if len(body) == 2 + lc:
            return Command(cla, ins, p1, p2, bytes(body[1 : 1 + lc]), body[-1] or 256)
        raise StatusError(SW_WRONG_LENGTH, "Lc does not match the data length")
    # extended length: 00 then two bytes
    if len(body) == 3:
        le = int.from_bytes(body[1:3], "big") or 65536
        return Command(cla, ins, p1, p2, b"", le)
    if len(body) < 3:
        raise StatusError(SW_WRONG_LENGTH, "truncated extended length")
    lc = int.from_bytes(body[1:3], "big")
    if lc == 0:
        raise StatusError(SW_WRONG_LENGTH, "extended Lc of zero")
    rest = body[3:]
    if len(rest) == lc:
        return Command(cla, ins, p1, p2, bytes(rest))
    if len(rest) == lc + 2:
        le = int.from_bytes(rest[lc:], "big") or 65536
        return Command(cla, ins, p1, p2, bytes(rest[:lc]), le)
    raise StatusError(SW_WRONG_LENGTH, "extended Lc does not match the data length")


def response(data: bytes, sw: int) -> bytes:
    return data + sw.to_bytes(2, "big")


def split_response(raw: bytes) -> tuple[bytes, int]:
    """Split a response into data and status word."""
    if len(raw) < 2:
        raise ValueError("response shorter than a status word")
    return raw[:-2], int.from_bytes(raw[-2:], "big")
