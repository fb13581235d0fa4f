"""Terminal registration and tokens (exception decisions: ``test_exception_decisions.py``, from real ingest)."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from sqlalchemy.orm import Session

from cardos.profile import ISSUER_XIANYANG
from clearing.errors import ClearingError
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.models import Card, Terminal
from clearing.registry import (
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
    with pytest.raises(ClearingError, match="E_TERMINAL_EXISTS"):
        register_terminal(db_session, "0000000000b2", "xy-bus-1")
    with pytest.raises(ClearingError, match=r"E_TERMINAL_EXISTS.*assign-terminal"):
        register_terminal(db_session, "0000000000b2", "xy-bus-2", replace_token=True)  # never moves the payable
    new_token = register_terminal(db_session, "0000000000b2", "xy-bus-1", replace_token=True)
    assert verify_terminal_token(db_session, "0000000000b2", token) is None
    assert verify_terminal_token(db_session, "0000000000b2", new_token) is terminal
    with pytest.raises(ClearingError, match="E_BAD_TERMINAL_ID"):
        register_terminal(db_session, "xyz", "xy-bus-1")
