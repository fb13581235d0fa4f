"""Ledger behaviour on SQLite and PostgreSQL: posting, idempotency, flags, two-phase, deltas."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from clearing import accounts
from clearing.contract.codes import Code
from clearing.errors import ClearingError
from clearing.ledger import (
    LedgerBatchError,
    TransferSpec,
    account_balance,
    apply_account_deltas,
    post_transfers,
    trial_balance,
)
from clearing.models import Account, AccountCode, Transfer, TransferCode

ISSUER = "01007120ffffffff"
ASN = "71200000000000000001"


def _setup(session: Session) -> tuple[int, int, int]:
    card = accounts.card_liability(session, ISSUER, ASN)
    float_ = accounts.issuer_float(session, ISSUER)
    payable = accounts.operator_payable(session, "bus-1")
    session.commit()
    return card, float_, payable


def test_single_transfer_moves_posted_totals_on_both_sides(db_session: Session) -> None:
    card, float_, _ = _setup(db_session)
    results = post_transfers(db_session, [TransferSpec.single("issue:1", float_, card, 500, TransferCode.CARD_SALE)])
    db_session.commit()
    assert [r.status for r in results] == ["created"]
    assert account_balance(db_session, card).credit_balance_fen == 500
    assert account_balance(db_session, float_).debit_balance_fen == 500
    tb = trial_balance(db_session)
    assert tb.debits_posted == tb.credits_posted == tb.transfers_posted_fen == 500


def test_replayed_transfer_is_exists_and_changes_nothing(db_session: Session) -> None:
    card, float_, _ = _setup(db_session)
    spec = TransferSpec.single("issue:1", float_, card, 500, TransferCode.CARD_SALE, source_ref="counter")
    post_transfers(db_session, [spec])
    db_session.commit()
    again = post_transfers(db_session, [spec, spec])
    db_session.commit()
    assert [r.status for r in again] == ["exists", "exists"]
    assert account_balance(db_session, card).credits_posted == 500
    assert db_session.scalar(select(func.count()).select_from(Transfer)) == 1


def test_replay_with_other_fields_is_transfer_conflict(db_session: Session) -> None:
    card, float_, _ = _setup(db_session)
    post_transfers(db_session, [TransferSpec.single("issue:1", float_, card, 500, TransferCode.CARD_SALE)])
    db_session.commit()
    with pytest.raises(LedgerBatchError) as info:
        post_transfers(db_session, [TransferSpec.single("issue:1", float_, card, 501, TransferCode.CARD_SALE)])
    assert info.value.code == Code.E_TRANSFER_CONFLICT
    assert "issue:1" in str(info.value)


def test_card_liability_never_goes_negative_and_strict_batch_writes_nothing(db_session: Session) -> None:
    card, float_, payable = _setup(db_session)
    batch = [
        TransferSpec.single("issue:1", float_, card, 300, TransferCode.CARD_SALE),
        TransferSpec.single("tap:a:1", card, payable, 200, TransferCode.PURCHASE),
        TransferSpec.single("tap:a:2", card, payable, 200, TransferCode.PURCHASE),  # only 100 left
    ]
    with pytest.raises(LedgerBatchError) as info:
        post_transfers(db_session, batch)
    assert info.value.code == Code.E_DEBITS_EXCEED_CREDITS
    assert [r.status for r in info.value.results] == ["created", "created", "failed"]
    db_session.rollback()
    assert db_session.scalar(select(func.count()).select_from(Transfer)) == 0
    assert account_balance(db_session, card).credits_posted == 0


def test_non_strict_batch_writes_the_good_and_reports_the_bad(db_session: Session) -> None:
    card, float_, payable = _setup(db_session)
    batch = [
        TransferSpec.single("issue:1", float_, card, 300, TransferCode.CARD_SALE),
        TransferSpec.single("tap:a:1", card, payable, 400, TransferCode.PURCHASE),
        TransferSpec.single("tap:a:2", card, payable, 0, TransferCode.PURCHASE),
        TransferSpec.single("tap:a:3", card, card, 1, TransferCode.PURCHASE),
        TransferSpec.single("tap:a:4", card, 999_999, 1, TransferCode.PURCHASE),
        TransferSpec.single("tap:a:5", card, payable, 300, TransferCode.PURCHASE),
    ]
    results = post_transfers(db_session, batch, strict=False)
    db_session.commit()
    assert [(r.status, r.code) for r in results] == [
        ("created", "OK"),
        ("failed", "E_DEBITS_EXCEED_CREDITS"),
        ("failed", "E_INVALID_TRANSFER"),
        ("failed", "E_INVALID_TRANSFER"),
        ("failed", "E_ACCOUNT_NOT_FOUND"),
        ("created", "OK"),
    ]
    assert account_balance(db_session, card).credit_balance_fen == 0
    assert account_balance(db_session, payable).credit_balance_fen == 300
    trial_balance(db_session)


def test_pending_then_partial_post_then_second_resolution_is_refused(db_session: Session) -> None:
    card, float_, _ = _setup(db_session)
    post_transfers(db_session, [TransferSpec.pending("load:1", float_, card, 1000, TransferCode.LOAD)])
    db_session.commit()
    b = account_balance(db_session, card)
    assert (b.credits_pending, b.credits_posted) == (1000, 0)
    trial_balance(db_session)

    post_transfers(db_session, [TransferSpec.post("load:1:post", "load:1", 800)])
    db_session.commit()
    b = account_balance(db_session, card)
    assert (b.credits_pending, b.credits_posted) == (0, 800)
    assert trial_balance(db_session).transfers_posted_fen == 800

    with pytest.raises(LedgerBatchError) as info:
        post_transfers(db_session, [TransferSpec.void("load:1:void", "load:1")])
    assert info.value.code == Code.E_PENDING_ALREADY_RESOLVED
    db_session.rollback()
    # replaying the post is still fine
    assert post_transfers(db_session, [TransferSpec.post("load:1:post", "load:1", 800)])[0].status == "exists"


def test_void_releases_the_reservation_and_pending_post_can_share_a_batch(db_session: Session) -> None:
    card, float_, payable = _setup(db_session)
    post_transfers(
        db_session,
        [
            TransferSpec.single("issue:1", float_, card, 500, TransferCode.CARD_SALE),
            TransferSpec.pending("hold:1", card, payable, 400, TransferCode.PURCHASE),
            TransferSpec.void("hold:1:void", "hold:1"),
            TransferSpec.pending("hold:2", card, payable, 500, TransferCode.PURCHASE),
            TransferSpec.post("hold:2:post", "hold:2"),
        ],
    )
    db_session.commit()
    b = account_balance(db_session, card)
    assert (b.debits_pending, b.debits_posted, b.credits_posted) == (0, 500, 500)
    assert db_session.get(Transfer, "hold:1:void") is not None
    trial_balance(db_session)


def test_post_of_more_than_pending_or_of_unknown_pending_is_refused(db_session: Session) -> None:
    card, float_, _ = _setup(db_session)
    post_transfers(db_session, [TransferSpec.pending("load:1", float_, card, 100, TransferCode.LOAD)])
    results = post_transfers(
        db_session,
        [TransferSpec.post("p1", "load:1", 101), TransferSpec.post("p2", "nope"), TransferSpec.void("p3", "p1")],
        strict=False,
    )
    assert [r.code for r in results] == ["E_PENDING_AMOUNT", "E_PENDING_NOT_FOUND", "E_PENDING_NOT_FOUND"]


def test_pending_reservation_counts_against_the_card_flag(db_session: Session) -> None:
    card, float_, payable = _setup(db_session)
    post_transfers(db_session, [TransferSpec.single("issue:1", float_, card, 500, TransferCode.CARD_SALE)])
    post_transfers(db_session, [TransferSpec.pending("hold:1", card, payable, 400, TransferCode.PURCHASE)])
    results = post_transfers(
        db_session, [TransferSpec.single("tap:1", card, payable, 200, TransferCode.PURCHASE)], strict=False
    )
    assert results[0].code == Code.E_DEBITS_EXCEED_CREDITS


def test_apply_account_deltas_updates_posted_totals_and_respects_flags(db_session: Session) -> None:
    card, float_, payable = _setup(db_session)
    apply_account_deltas(db_session, {float_: (700, 0), card: (0, 700)})
    db_session.commit()
    assert account_balance(db_session, card).credits_posted == 700
    assert account_balance(db_session, float_).debits_posted == 700
    # The ORM object sees the new totals too (stale identity-map entries are expired).
    assert db_session.get(Account, card) is not None
    assert db_session.get(Account, card).credits_posted == 700  # type: ignore[union-attr]
    with pytest.raises(ClearingError) as info:
        apply_account_deltas(db_session, {card: (701, 0), payable: (0, 701)})
    assert info.value.code == Code.E_DEBITS_EXCEED_CREDITS
    db_session.rollback()
    assert account_balance(db_session, card).credits_posted == 700


def test_trial_balance_catches_an_account_edited_behind_the_ledger(db_session: Session) -> None:
    card, float_, _ = _setup(db_session)
    post_transfers(db_session, [TransferSpec.single("issue:1", float_, card, 500, TransferCode.CARD_SALE)])
    db_session.commit()
    db_session.execute(update(Account).where(Account.id == float_).values(debits_posted=Account.debits_posted + 1))
    with pytest.raises(ClearingError) as info:
        trial_balance(db_session)
    assert info.value.code == Code.E_LEDGER_INVARIANT


def test_db_check_refuses_a_negative_card_liability_even_behind_the_ledger(db_session: Session) -> None:
    card, _, _ = _setup(db_session)
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        db_session.execute(text("UPDATE accounts SET debits_posted = 1 WHERE id = :id"), {"id": card})
        db_session.flush()


def test_get_or_create_account_is_stable(db_sessions: sessionmaker[Session]) -> None:
    with db_sessions() as s1:
        a = accounts.card_liability(s1, ISSUER, ASN)
        s1.commit()
    with db_sessions() as s2:
        assert accounts.card_liability(s2, ISSUER, ASN) == a
        assert accounts.fee_revenue(s2) != a
        s2.commit()
        row = s2.get(Account, a)
        assert row is not None and row.code == AccountCode.CARD_LIABILITY and row.flags == 1
