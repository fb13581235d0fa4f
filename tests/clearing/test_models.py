"""The database itself refuses bad money and duplicate taps, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import Engine, delete, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from clearing import accounts, db
from clearing.models import (
    Account,
    Card,
    DenylistEntryRow,
    ExceptionItem,
    Issuer,
    Tap,
    Transfer,
    utcnow,
)

ISSUER = "01007120ffffffff"
ASN = "71200000000000000001"
DAY = dt.date(2026, 11, 24)


def _two_accounts(session: Session) -> tuple[int, int]:
    a = accounts.issuer_float(session, ISSUER)
    b = accounts.card_liability(session, ISSUER, ASN)
    session.commit()
    return a, b


@pytest.mark.parametrize("amount", [0, -1])
def test_db_refuses_a_non_positive_transfer_amount(db_session: Session, amount: int) -> None:
    a, b = _two_accounts(db_session)
    with pytest.raises(IntegrityError, match="amount_positive"):
        db_session.execute(
            insert(Transfer).values(
                id="x",
                debit_account_id=a,
                credit_account_id=b,
                amount_fen=amount,
                ledger=156,
                code=1,
                state="posted",
                created_at=utcnow(),
            )
        )


def test_db_refuses_a_transfer_to_an_unknown_account(db_session: Session) -> None:
    a, _ = _two_accounts(db_session)
    with pytest.raises(IntegrityError):
        db_session.execute(
            insert(Transfer).values(
                id="x",
                debit_account_id=a,
                credit_account_id=12345,
                amount_fen=1,
                ledger=156,
                code=1,
                state="posted",
                created_at=utcnow(),
            )
        )


def _tap(**over: object) -> Tap:
    fields: dict[str, object] = {
        "business_day": DAY,
        "terminal_id": "0000000000a1",
        "terminal_seq": 7,
        "psam_serial": "0102",
        "issuer_id": ISSUER,
        "card_asn": ASN,
        "card_type": "ordinary",
        "tx_type": 9,
        "amount_fen": 200,
        "balance_before_fen": 1000,
        "offline_counter": 3,
        "tx_time": dt.datetime(2026, 11, 24, 8, 15, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "key_version": 1,
        "alg_id": 0,
        "tac": "01020304",
        "verdict": "accepted",
        "code": "OK",
        "received_at": utcnow(),
    }
    fields.update(over)
    return Tap(**fields)


def test_db_refuses_a_duplicate_terminal_sequence(db_session: Session) -> None:
    db_session.add(_tap())
    db_session.commit()
    db_session.add(_tap(offline_counter=4))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_db_refuses_a_duplicate_card_counter_and_type(db_session: Session) -> None:
    db_session.add(_tap())
    db_session.commit()
    db_session.add(_tap(terminal_seq=8))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_same_card_counter_with_another_type_is_a_different_tap(db_session: Session) -> None:
    db_session.add_all([_tap(), _tap(terminal_seq=8, tx_type=6)])
    db_session.commit()
    assert len(db_session.scalars(select(Tap)).all()) == 2


def test_taps_refuse_negative_amounts(db_session: Session) -> None:
    db_session.add(_tap(amount_fen=-1))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_a_tap_naming_an_unknown_batch_is_refused(db_session: Session) -> None:
    """The statement-level check that replaced the row-level foreign key (migration 0003)."""
    db_session.add(_tap(batch_id=424242))
    with pytest.raises(IntegrityError, match="batch that does not exist"):
        db_session.flush()


def test_ledger_accounts_are_never_deleted(db_session: Session) -> None:
    a, _ = _two_accounts(db_session)
    with pytest.raises(IntegrityError, match="never deleted"):
        db_session.execute(delete(Account).where(Account.id == a))


def test_times_are_stored_utc_and_read_back_aware(db_session: Session) -> None:
    db_session.add(_tap())
    db_session.commit()
    db_session.expunge_all()
    tap = db_session.scalars(select(Tap)).one()
    assert tap.tx_time == dt.datetime(2026, 11, 24, 0, 15, tzinfo=dt.UTC)
    assert tap.tx_time.utcoffset() == dt.timedelta(0)


def test_naive_datetimes_are_refused(db_session: Session) -> None:
    db_session.add(_tap(tx_time=dt.datetime(2026, 11, 24, 8, 15)))
    with pytest.raises(Exception, match="naive datetime"):
        db_session.flush()


def test_only_one_live_denylist_entry_per_card(db_session: Session) -> None:
    now = utcnow()
    db_session.add(DenylistEntryRow(issuer_id=ISSUER, card_asn=ASN, reason="lost", effective_at=now, added_version=1))
    db_session.flush()
    db_session.add(DenylistEntryRow(issuer_id=ISSUER, card_asn=ASN, reason="lost", effective_at=now, added_version=2))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_card_shadow_balance_cannot_be_negative(db_session: Session) -> None:
    db_session.add(Issuer(issuer_id=ISSUER, city="xianyang", name="Xianyang", own=True))
    account = accounts.card_liability(db_session, ISSUER, ASN)
    db_session.add(
        Card(
            issuer_id=ISSUER,
            card_asn=ASN,
            card_type="ordinary",
            issued_at=utcnow(),
            start_date=DAY,
            expiry_date=DAY,
            key_version=1,
            alg_id=0,
            account_id=account,
            shadow_balance_fen=-5,
        )
    )
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_exception_item_decided_at_goes_with_state(db_session: Session) -> None:
    db_session.add(ExceptionItem(code="E_TAC_MISMATCH", state="accepted"))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_db_refuses_a_second_resolution_of_a_pending_transfer(db_session: Session) -> None:
    """The partial unique index on pending_id (migration 0003) still refuses a second resolution."""
    a, b = _two_accounts(db_session)

    def transfer(id: str, state: str, pending_id: str | None = None) -> Transfer:
        return Transfer(
            id=id, debit_account_id=a, credit_account_id=b, amount_fen=5, ledger=156, code=1, state=state,
            pending_id=pending_id, created_at=utcnow(),
        )  # fmt: skip

    db_session.add_all([transfer("p", "pending"), transfer("x1", "posted"), transfer("x2", "posted")])
    db_session.flush()
    db_session.add(transfer("post", "posted", pending_id="p"))
    db_session.flush()
    db_session.add(transfer("void", "voided", pending_id="p"))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_first_uses_of_a_new_counter_at_once_get_different_values(
    db_sessions: sessionmaker[Session],
) -> None:
    """The first use of a counter (an issuer's first ASN) used to race: all but one failed on the key."""
    n = 8
    barrier = threading.Barrier(n)
    values: list[int] = []
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            with db_sessions() as session:
                barrier.wait(timeout=10)
                values.append(db.bump_counter(session, "asn:race"))
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(values) == list(range(1, n + 1))
    with db_sessions() as session:
        assert db.read_counter(session, "asn:race") == n


@pytest.mark.postgres
def test_ledger_accounts_and_batches_cannot_be_truncated(pg_engine: Engine) -> None:
    """TRUNCATE skips row triggers; a statement trigger refuses it, as the foreign keys did."""
    for table in ("accounts", "batches"):
        with pg_engine.begin() as conn, pytest.raises(DBAPIError, match="never deleted"):
            conn.execute(text(f"TRUNCATE TABLE {table} CASCADE"))


@pytest.mark.postgres
def test_the_reference_checks_use_the_schema_they_were_made_in(pg_engine: Engine) -> None:
    """A foreign key is bound to its table; the trigger functions carry their search_path."""
    with pg_engine.begin() as conn:
        config = conn.execute(
            text("SELECT proconfig FROM pg_proc WHERE proname = 'yk_transfers_accounts_exist' AND pronamespace = "
                 "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())")
        ).scalar_one()  # fmt: skip
    assert any(item.startswith("search_path=") for item in config), config
