"""Whatever a reader sends, the card answers with a status word and never crashes.

Random APDUs, APDUs from a grammar of the card's own commands, and mutations of the
valid APDUs of real flows (STYLE.md: property tests for invariants). A handler bug that
``CardOS`` would hide as 6985 fails the test through ``on_internal_error``.
"""

from __future__ import annotations

import random
from typing import Any

from cardkit import Terminal, make_image, select_apdu, transit_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardos.card import Card
from cardos.profile import AID_AUTH, AID_PURSE, PURSE_MAX_FEN, CardType

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN_INS = [0xA4, 0xB0, 0xB2, 0x84, 0x5C, 0x50, 0x54, 0xDC, 0x52, 0x5A, 0x1E, 0x20, 0x88, 0xC0, 0xCA]


class StrictCard(Card):
    """A card that records handler bugs instead of hiding them as 6985."""

    def on_internal_error(self, exc: Exception) -> None:
        raise AssertionError(f"handler bug: {exc!r}") from exc


IMAGE = make_image(card_type=CardType.SOCIAL_SECURITY)


def fresh_card() -> StrictCard:
    """Same image and same randoms every time, so the recorded MACs of VALID verify."""
    card = StrictCard(IMAGE, random_bytes=random.Random(7).randbytes)
    card.power_on()
    return card


def valid_flow_apdus() -> list[bytes]:
    """Every APDU of a purchase, composite purchase, load, prove, block and auth session."""
    sent: list[bytes] = []
    card = fresh_card()
    original = card.transmit

    def spy(raw: bytes) -> bytes:
        sent.append(bytes(raw))
        return original(raw)

    card.transmit = spy  # type: ignore[method-assign]
    terminal = Terminal(card, card.keys)
    terminal.purchase(100)
    terminal.purchase(50, capp=True, record=transit_record(50, 9_850))
    terminal.load(1_000)
    terminal.prove(0x09, 2)
    for raw in ("00B095001E", "00B0960037", "00B097003C", "00B201C417", "00B201F430", "805C000204"):
        card.transmit(bytes.fromhex(raw))
    terminal.select_auth()
    card.transmit(bytes.fromhex("00B0810000"))
    card.transmit(bytes.fromhex("00B0010000"))
    card.transmit(bytes.fromhex("0020000106") + b"123456")
    card.transmit(bytes.fromhex("0088000040") + bytes(64) + b"\x00")
    terminal.select_purse()
    terminal.block()
    return sent


VALID = valid_flow_apdus()


def check_answer(card: Card, raw: bytes) -> int:
    answer = card.transmit(raw)
    assert isinstance(answer, bytes) and len(answer) >= 2
    sw = int.from_bytes(answer[-2:], "big")
    assert answer[-2] in (0x62, 0x63, 0x67, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x90, 0x93, 0x94, 0x95), hex(sw)
    if sw != 0x9000 and sw != 0x6283:
        assert len(answer) == 2, "an error carries no data"
    assert 0 <= card.balance_fen <= PURSE_MAX_FEN
    return sw


@FUZZ
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8), st.sampled_from([None, "purse", "auth"]))
def test_random_bytes_never_crash_the_card(apdus: list[bytes], app: str | None) -> None:
    card = fresh_card()
    if app:
        card.transmit(select_apdu(AID_PURSE if app == "purse" else AID_AUTH))
    for raw in apdus:
        check_answer(card, raw)


grammar_apdu = st.builds(
    lambda cla, ins, p1, p2, data, le: (
        bytes([cla, ins, p1, p2])
        + (bytes([len(data)]) + data if data else b"")
        + (bytes([le]) if le is not None else b"")
    ),
    st.sampled_from([0x00, 0x80, 0x84, 0x04, 0xFF]),
    st.sampled_from(KNOWN_INS),
    st.integers(0, 255) | st.sampled_from([0x00, 0x01, 0x03, 0x04, 0x81, 0x95, 0x97]),
    st.integers(0, 255) | st.sampled_from([0x00, 0x01, 0x02, 0x06, 0x09, 0xC4, 0xF0, 0xF4]),
    st.binary(max_size=80) | st.binary(min_size=11, max_size=11) | st.binary(min_size=15, max_size=15),
    st.none() | st.integers(0, 255),
)


@FUZZ
@given(st.lists(grammar_apdu, min_size=1, max_size=12))
def test_grammar_apdus_never_crash_the_card(apdus: list[bytes]) -> None:
    card = fresh_card()
    card.transmit(select_apdu(AID_PURSE))
    for raw in apdus:
        check_answer(card, raw)


def mutate(raw: bytes, data: Any) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "set", "truncate", "extend", "lc", "le"]))
    if kind == "truncate":
        return raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "extend":
        return raw + data.draw(st.binary(min_size=1, max_size=4))
    if kind == "lc" and len(raw) > 4:
        return raw[:4] + bytes([data.draw(st.integers(0, 255))]) + raw[5:]
    if kind == "le":
        return raw[:-1] + bytes([data.draw(st.integers(0, 255))]) if raw else raw
    i = data.draw(st.integers(0, len(raw) - 1))
    value = raw[i] ^ (1 << data.draw(st.integers(0, 7))) if kind == "flip" else data.draw(st.integers(0, 255))
    return raw[:i] + bytes([value]) + raw[i + 1 :]


@FUZZ
@given(st.data())
def test_mutated_valid_flows_never_crash_and_only_a_clean_debit_or_credit_moves_money(data: Any) -> None:
    card = fresh_card()
    mutated_at = set(data.draw(st.lists(st.integers(0, len(VALID) - 1), max_size=6)))
    for i, raw in enumerate(VALID):
        if i in mutated_at:
            raw = mutate(raw, data)
        before = card.balance_fen
        sw = check_answer(card, raw)
        if card.balance_fen != before:
            assert sw == 0x9000 and raw[:2] in (b"\x80\x54", b"\x80\x52")
            # MAC1 / MAC2 bind the amount: no mutation moves a different sum
            assert card.balance_fen - before in (-100, -50, 1_000)


def test_unmutated_valid_flows_move_the_expected_money() -> None:
    card = fresh_card()
    sws = [check_answer(card, raw) for raw in VALID]
    assert card.balance_fen == 10_000 - 100 - 50 + 1_000
    assert card.blocked and sws.count(0x9000) == len(VALID)
