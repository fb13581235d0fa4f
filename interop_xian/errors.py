"""The one error of interop: a stable code from interop's registry and a human sentence.

Follows ``clearing.errors`` (``CodedError``): every refusal of the batch channel (a bad
signature, a sequence gap, a key file that does not parse) and of the issuer side is an
``InteropError`` whose code comes from ``InteropCode``. The codes are interop's own; none
repeats a clearing code's string. The same code is in the HTTP answer, the log line and the
stored refusal. Messages never carry key material.

The registry is split in two marked blocks: the wire (acquirer side and the channel) and the
issuer (validation, netting, disputes); each helper edits only its own block.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from clearing.errors import CodedError


class InteropCode(StrEnum):
    # --- wire ---
    E_INTEROP_UNSIGNED = "E_INTEROP_UNSIGNED"
    E_INTEROP_UNKNOWN_KEY = "E_INTEROP_UNKNOWN_KEY"
    E_INTEROP_KEY_RETIRED = "E_INTEROP_KEY_RETIRED"
    E_INTEROP_BAD_SIGNATURE = "E_INTEROP_BAD_SIGNATURE"
    E_INTEROP_MALFORMED = "E_INTEROP_MALFORMED"
    E_INTEROP_TOO_LARGE = "E_INTEROP_TOO_LARGE"
    E_INTEROP_WRONG_PEER = "E_INTEROP_WRONG_PEER"
    E_INTEROP_SEQUENCE_GAP = "E_INTEROP_SEQUENCE_GAP"
    E_INTEROP_BATCH_CONFLICT = "E_INTEROP_BATCH_CONFLICT"
    E_INTEROP_JUDGE_FAILED = "E_INTEROP_JUDGE_FAILED"
    E_INTEROP_NO_SIGNING_KEY = "E_INTEROP_NO_SIGNING_KEY"
    E_INTEROP_NOT_CONFIGURED = "E_INTEROP_NOT_CONFIGURED"
    E_INTEROP_BAD_KEY_FILE = "E_INTEROP_BAD_KEY_FILE"
    E_INTEROP_KEY_STORE = "E_INTEROP_KEY_STORE"
    E_INTEROP_PEER_UNREACHABLE = "E_INTEROP_PEER_UNREACHABLE"
    E_INTEROP_PEER_REFUSED = "E_INTEROP_PEER_REFUSED"
    E_INTEROP_BAD_ACK = "E_INTEROP_BAD_ACK"
    E_INTEROP_PEER_AHEAD = "E_INTEROP_PEER_AHEAD"
    E_INTEROP_AMOUNT_MISMATCH = "E_INTEROP_AMOUNT_MISMATCH"
    # --- issuer ---
    E_NET_DEBIT_CAP = "E_NET_DEBIT_CAP"
    E_INTEROP_ITEM_MISMATCH = "E_INTEROP_ITEM_MISMATCH"
    E_BAD_CAP = "E_BAD_CAP"
    E_WINDOW_FINAL = "E_WINDOW_FINAL"
    E_WINDOW_NOT_PROPOSED = "E_WINDOW_NOT_PROPOSED"
    E_WINDOW_NOT_DUE = "E_WINDOW_NOT_DUE"
    E_DIGEST_MISMATCH = "E_DIGEST_MISMATCH"
    E_UNKNOWN_DISPUTE = "E_UNKNOWN_DISPUTE"
    E_DISPUTE_TRANSITION = "E_DISPUTE_TRANSITION"
    E_DISPUTE_EXISTS = "E_DISPUTE_EXISTS"
    E_DISPUTE_DEADLINE = "E_DISPUTE_DEADLINE"
    E_BAD_DISPUTE = "E_BAD_DISPUTE"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    status: int  # the HTTP status when this code refuses a request
    meaning: str


C = InteropCode
CODES: Final[dict[InteropCode, CodeInfo]] = {
    # --- wire ---
    C.E_INTEROP_UNSIGNED: CodeInfo(401, "a batch without the key id and signature headers"),
    C.E_INTEROP_UNKNOWN_KEY: CodeInfo(401, "the batch names a key that is not one of the peer's imported keys"),
    C.E_INTEROP_KEY_RETIRED: CodeInfo(401, "the batch is signed with a peer key whose overlap has ended"),
    C.E_INTEROP_BAD_SIGNATURE: CodeInfo(
        401, "the signature does not verify: the batch was altered, or signed by another key"
    ),
    C.E_INTEROP_MALFORMED: CodeInfo(422, "a signed body that is not a batch in the canonical encoding"),
    C.E_INTEROP_TOO_LARGE: CodeInfo(413, "a body larger than a batch may be; nothing was read"),
    C.E_INTEROP_WRONG_PEER: CodeInfo(403, "a batch from another city than its key's, or not addressed to us"),
    C.E_INTEROP_SEQUENCE_GAP: CodeInfo(409, "batches are missing before this one: resend from the expected sequence"),
    C.E_INTEROP_BATCH_CONFLICT: CodeInfo(409, "this sequence was already received with other content"),
    C.E_INTEROP_JUDGE_FAILED: CodeInfo(503, "the issuer could not judge the batch now; nothing was stored, resend it"),
    C.E_INTEROP_NO_SIGNING_KEY: CodeInfo(
        503, "this centre has no interop signing key: run `yikatong interop keys rotate`"
    ),
    C.E_INTEROP_NOT_CONFIGURED: CodeInfo(503, "interop is not configured here (YIKATONG_PEER_URL, the peer's keys)"),
    C.E_INTEROP_BAD_KEY_FILE: CodeInfo(422, "a public key document that is not of the expected form"),
    C.E_INTEROP_KEY_STORE: CodeInfo(503, "the interop signing key file cannot be read or does not decrypt"),
    C.E_INTEROP_PEER_UNREACHABLE: CodeInfo(502, "the peer did not answer (connection, TLS, timeout or a 5xx)"),
    C.E_INTEROP_PEER_REFUSED: CodeInfo(502, "the peer refused the batch with a 4xx; it is retried after the fix"),
    C.E_INTEROP_BAD_ACK: CodeInfo(502, "the peer's acknowledgement is unsigned, badly signed or not for this batch"),
    C.E_INTEROP_PEER_AHEAD: CodeInfo(409, "the peer expects a sequence beyond what was ever sent: our state was lost"),
    C.E_INTEROP_AMOUNT_MISMATCH: CodeInfo(409, "the issuer accepted another amount than the record's"),
    # --- issuer ---
    C.E_NET_DEBIT_CAP: CodeInfo(409, "the item would take our net debit towards the peer past its cap"),
    C.E_INTEROP_ITEM_MISMATCH: CodeInfo(422, "an item whose id, terminal, sequence or digest is not its record's"),
    C.E_BAD_CAP: CodeInfo(422, "a net debit cap below 0 fen or an alarm percentage outside 1..100"),
    C.E_WINDOW_FINAL: CodeInfo(409, "the window's net settlement instruction is already final"),
    C.E_WINDOW_NOT_PROPOSED: CodeInfo(409, "an earlier window with items is not final yet: windows close in day order"),
    C.E_WINDOW_NOT_DUE: CodeInfo(
        409, "the window cannot close here yet: its day has not ended, or our taps of it are still on their way"
    ),
    C.E_DIGEST_MISMATCH: CodeInfo(409, "the peer's instruction digest is not ours: an alarm lists both sides' items"),
    C.E_UNKNOWN_DISPUTE: CodeInfo(404, "no such dispute"),
    C.E_DISPUTE_TRANSITION: CodeInfo(409, "the dispute cannot move from its state to that one, or not by this side"),
    C.E_DISPUTE_EXISTS: CodeInfo(409, "a dispute for this item is already open"),
    C.E_DISPUTE_DEADLINE: CodeInfo(409, "the state's deadline has passed: only a write-off remains"),
    C.E_BAD_DISPUTE: CodeInfo(422, "a dispute field outside its rules (note, evidence, amount)"),
}
del C


class InteropError(CodedError[InteropCode]):
    """A refused interop operation: ``code`` (stable) and ``message`` (a sentence)."""

    code_type = InteropCode
    statuses = CODES


__all__ = ["CODES", "CodeInfo", "InteropCode", "InteropError"]
