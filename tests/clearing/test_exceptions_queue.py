"""Exception queue decisions post new transfers; terminal registration and tokens."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cardos.profile import ISSUER_XIANYANG
from clearing import accounts
from clearing.errors import ClearingError
from clearing.exceptions_queue import UNVERIFIED_CODES, accept, add_item, list_items, write_off
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Card, Tap, Terminal, Transfer
from clearing.registry import (
    RegistryError,
    TokenCheck,
    check_terminal_token,
    check_token,
    ensure_issuers,
    register_terminal,
    verify_terminal_token,
)

XY = ISSUER_XIANYANG.hex()
NOW = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.UTC)
TERMINAL = "0000000000a1"


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    ks = KeyStore.open(tmp_path_factory.mktemp("ks") / "keystore.json", bytes(32))
    ks.init(["xianyang"])
    return ks


@pytest.fixture
def card(db_session: Session, keystore: KeyStore) -> Card:
    ensure_issuers(db_session, own_city="xianyang")
    _, card = issue_card(db_session, keystore, issuer_id=XY, card_type="ordinary", balance_fen=1000, now=NOW)
    register_terminal(db_session, TERMINAL, "xy-bus-1", "R12")
    db_session.commit()
    return card


def _record(card: Card, *, seq: int = 7, counter: int = 3, amount: int = 200, before: int = 1000) -> dict[str, object]:
    return {
        "terminal_id": TERMINAL, "terminal_seq": seq, "psam_serial": "0102030405060708",
        "issuer_id": card.issuer_id, "card_asn": card.card_asn, "card_type": "ordinary", "tx_type": 9,
        "amount_fen": amount, "balance_before_fen": before, "offline_counter": counter,
        "tx_time": "2026-11-24T08:15:00+08:00", "key_version": 1, "alg_id": 0, "tac": "01020304",
        "route_id": "R12", "stop_id": None, "vehicle_id": None, "fare": None, "status": "normal",
    }  # fmt: skip


def _tap_count(session: Session, terminal_id: str, seq: int) -> int:
    return int(
        session.scalar(
            select(func.count()).select_from(Tap).where(Tap.terminal_id == terminal_id, Tap.terminal_seq == seq)
        )
        or 0
    )


def test_accepting_a_rejected_record_posts_it_as_its_tap(db_session: Session, card: Card) -> None:
    item = add_item(db_session, code="E_AMOUNT_LIMIT", message="above the limit", record=_record(card))
    db_session.commit()
    assert [i.id for i in list_items(db_session)] == [item.id]

    accept(db_session, item.id, now=NOW, note="limit was set too low", decided_by="ops")
    db_session.commit()
    transfer = db_session.get(Transfer, f"tap:{TERMINAL}:7")
    terminal = db_session.get(Terminal, TERMINAL)
    assert transfer is not None and terminal is not None
    assert (transfer.debit_account_id, transfer.credit_account_id, transfer.amount_fen) == (
        card.account_id, terminal.payable_account_id, 200,
    )  # fmt: skip
    assert item.state == "accepted" and item.decision_transfer_id == transfer.id and item.decided_at is not None
    tap = db_session.get(Tap, item.tap_id)
    assert tap is not None and tap.verdict == "accepted" and tap.transfer_id == transfer.id
    assert _tap_count(db_session, TERMINAL, 7) == 1
    db_session.refresh(card)
    assert (card.shadow_balance_fen, card.last_offline_counter) == (800, 3)
    assert account_balance(db_session, card.account_id).credit_balance_fen == 800
    trial_balance(db_session)
    assert list_items(db_session) == []

    with pytest.raises(ClearingError, match="E_ALREADY_DECIDED"):
        accept(db_session, item.id, now=NOW)


@pytest.mark.parametrize("code", sorted(UNVERIFIED_CODES))
def test_a_record_whose_tac_was_never_verified_cannot_be_accepted(db_session: Session, card: Card, code: str) -> None:
    item = add_item(db_session, code=code, message="forged?", record=_record(card))
    db_session.commit()
    transfers_before = db_session.scalar(select(func.count()).select_from(Transfer))
    with pytest.raises(ClearingError, match="E_UNVERIFIED_RECORD"):
        accept(db_session, item.id, now=NOW)
    db_session.rollback()
    assert db_session.get(Transfer, f"tap:{TERMINAL}:7") is None
    assert db_session.scalar(select(func.count()).select_from(Transfer)) == transfers_before
    assert _tap_count(db_session, TERMINAL, 7) == 0
    db_session.refresh(card)
    assert (card.shadow_balance_fen, card.last_offline_counter) == (1000, None)
    assert account_balance(db_session, card.account_id).credit_balance_fen == 1000
    write_off(db_session, item.id, now=NOW, note="forged record", amount_fen=0)
    db_session.commit()
    assert item.state == "written_off" and item.decision_transfer_id is None


def test_a_duplicate_cannot_be_accepted_but_can_be_closed_without_money(db_session: Session, card: Card) -> None:
    first = add_item(db_session, code="S_BALANCE_DISCONTINUITY", record=_record(card))
    accept(db_session, first.id, now=NOW)
    dup = add_item(db_session, code="E_DUPLICATE_TERMINAL_SEQ", record=_record(card, counter=4))
    db_session.commit()
    with pytest.raises(ClearingError, match="E_DUPLICATE_TAP"):
        accept(db_session, dup.id, now=NOW)
    db_session.rollback()
    transfers_before = db_session.scalar(select(func.count()).select_from(Transfer))
    write_off(db_session, dup.id, now=NOW, note="replayed record", amount_fen=0)
    db_session.commit()
    assert dup.state == "written_off" and dup.decision_transfer_id is None
    assert db_session.scalar(select(func.count()).select_from(Transfer)) == transfers_before


def test_write_off_releases_card_value_to_write_off_income(db_session: Session, card: Card) -> None:
    # a verified debit (its TAC checked) that no operator may be paid for: over the limit
    item = add_item(db_session, code="E_AMOUNT_LIMIT", record=_record(card, amount=300))
    write_off(db_session, item.id, now=NOW, note="operator suspended")
    db_session.commit()
    transfer = db_session.get(Transfer, f"exc:{item.id}:write-off")
    assert transfer is not None and transfer.amount_fen == 300
    assert transfer.credit_account_id == accounts.write_off_income(db_session)
    assert account_balance(db_session, card.account_id).credit_balance_fen == 700
    trial_balance(db_session)
    with pytest.raises(ClearingError, match="E_NOTE_REQUIRED"):
        write_off(db_session, item.id, now=NOW, note=" ")


@pytest.mark.parametrize("code", ["E_TAC_MISMATCH", "E_UNKNOWN_TERMINAL"])
def test_writing_off_an_unverified_record_releases_no_card_value(db_session: Session, card: Card, code: str) -> None:
    item = add_item(db_session, code=code, record=_record(card, amount=300))
    with pytest.raises(ClearingError) as info:
        write_off(db_session, item.id, now=NOW, note="forged", amount_fen=300)
    assert info.value.code == "E_UNVERIFIED_RECORD"
    write_off(db_session, item.id, now=NOW, note="forged")  # closes with amount 0
    db_session.commit()
    assert db_session.get(Transfer, f"exc:{item.id}:write-off") is None
    assert account_balance(db_session, card.account_id).credit_balance_fen == 1000
    trial_balance(db_session)


def test_accepting_more_than_the_card_holds_is_refused(db_session: Session, card: Card) -> None:
    item = add_item(db_session, code="E_AMOUNT_LIMIT", record=_record(card, amount=5000, before=6000))
    db_session.commit()
    with pytest.raises(ClearingError) as info:
        accept(db_session, item.id, now=NOW)
    assert info.value.code == "E_DEBITS_EXCEED_CREDITS"


def test_terminal_token_is_shown_once_and_stored_hashed(db_session: Session, card: Card) -> None:
    token = register_terminal(db_session, "0000000000B2", "xy-bus-1")
    db_session.commit()
    terminal = db_session.get(Terminal, "0000000000b2")
    assert terminal is not None and terminal.token_hash.startswith("scrypt$")
    named, sep, secret = token.partition(".")
    assert (named, sep) == ("0000000000b2", ".")  # <terminal_id>.<secret>
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32  # 256 random bits, urlsafe
    assert secret not in terminal.token_hash and check_token(terminal.token_hash, secret)  # the secret's hash only
    assert verify_terminal_token(db_session, "0000000000b2", token) is terminal
    assert verify_terminal_token(db_session, "0000000000b2", token + "x") is None
    assert verify_terminal_token(db_session, "0000000000b2", secret) is None  # the prefix is part of the token
    assert verify_terminal_token(db_session, TERMINAL, token) is None
    assert check_terminal_token(db_session, TERMINAL, token) == (TokenCheck.OTHER_TERMINAL, None)
    assert check_terminal_token(db_session, TERMINAL, token + "x") == (TokenCheck.INVALID, None)
    with pytest.raises(RegistryError, match="E_TERMINAL_EXISTS"):
        register_terminal(db_session, "0000000000b2", "xy-bus-1")
    new_token = register_terminal(db_session, "0000000000b2", "xy-bus-2", replace_token=True)
    assert verify_terminal_token(db_session, "0000000000b2", token) is None
    assert verify_terminal_token(db_session, "0000000000b2", new_token) is terminal
    with pytest.raises(RegistryError, match="E_BAD_TERMINAL_ID"):
        register_terminal(db_session, "xyz", "xy-bus-1")
