"""Property: any sequence of transfers, replays and failures keeps the books balanced.

After every call: total debits == total credits == the sum of posted transfers; each
account's totals equal what its transfers say; flagged accounts never go past their
flag; replaying everything already stored changes nothing.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from tapfactory import truncate

from clearing import accounts, db
from clearing.ledger import LedgerBatchError, TransferSpec, post_transfers, trial_balance
from clearing.models import Account, AccountCode, AccountFlag, Base, Transfer

ID_POOL = [f"t{i}" for i in range(6)]

single = st.tuples(
    st.just("single"), st.sampled_from(ID_POOL), st.integers(0, 4), st.integers(0, 4), st.integers(-1, 1500)
)
pending = st.tuples(
    st.just("pending"), st.sampled_from(ID_POOL), st.integers(0, 4), st.integers(0, 4), st.integers(1, 1500)
)
post = st.tuples(st.just("post"), st.sampled_from(ID_POOL), st.sampled_from(ID_POOL), st.none() | st.integers(1, 1500))
void = st.tuples(st.just("void"), st.sampled_from(ID_POOL), st.sampled_from(ID_POOL))
op = st.one_of(single, pending, post, void)
calls = st.lists(st.tuples(st.lists(op, min_size=1, max_size=6), st.booleans()), min_size=1, max_size=12)


def _spec(raw: tuple[object, ...], ids: list[int]) -> TransferSpec:
    kind = raw[0]
    if kind in ("single", "pending"):
        _, tid, d, c, amount = raw
        assert isinstance(d, int) and isinstance(c, int) and isinstance(amount, int) and isinstance(tid, str)
        make = TransferSpec.single if kind == "single" else TransferSpec.pending
        return make(tid, ids[d], ids[c], amount, 1)
    if kind == "post":
        _, tid, pid, amount = raw
        assert isinstance(tid, str) and isinstance(pid, str)
        return TransferSpec.post(tid + "p", pid, amount if isinstance(amount, int) else None)
    _, tid, pid = raw
    assert isinstance(tid, str) and isinstance(pid, str)
    return TransferSpec.void(tid + "v", pid)


def _reset(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            truncate(conn, ["transfers", "accounts"])
    else:
        Base.metadata.drop_all(engine, tables=[Transfer.__table__, Account.__table__])  # type: ignore[list-item]
        Base.metadata.create_all(engine, tables=[Account.__table__, Transfer.__table__])  # type: ignore[list-item]


def _check_books(session: Session) -> None:
    trial_balance(session)
    expected: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    transfers = session.execute(select(Transfer)).scalars().all()
    resolved = {t.pending_id for t in transfers if t.pending_id}
    for t in transfers:
        if t.state == "posted":
            expected[t.debit_account_id][1] += t.amount_fen
            expected[t.credit_account_id][3] += t.amount_fen
        elif t.state == "pending" and t.id not in resolved:
            expected[t.debit_account_id][0] += t.amount_fen
            expected[t.credit_account_id][2] += t.amount_fen
    for acc in session.execute(select(Account)).scalars():
        got = [acc.debits_pending, acc.debits_posted, acc.credits_pending, acc.credits_posted]
        assert got == expected[acc.id], (acc, got, expected[acc.id])
        if acc.flags & AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS:
            assert acc.debits_pending + acc.debits_posted <= acc.credits_posted
        if acc.flags & AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS:
            assert acc.credits_pending + acc.credits_posted <= acc.debits_posted


def _replay_all(session: Session) -> None:
    """Every stored transfer, replayed with its own fields, is ``exists`` and changes nothing."""
    before = session.execute(select(Account.id, Account.debits_posted, Account.credits_posted)).all()
    specs = []
    for t in session.execute(select(Transfer).order_by(Transfer.id)).scalars():
        kind = {"posted": "single", "pending": "pending", "voided": "void_pending"}[t.state]
        if t.pending_id is not None:
            kind = "post_pending" if t.state == "posted" else "void_pending"
        specs.append(
            TransferSpec(
                id=t.id,
                debit_account_id=t.debit_account_id,
                credit_account_id=t.credit_account_id,
                amount_fen=None if kind == "void_pending" else t.amount_fen,
                code=t.code,
                kind=kind,  # type: ignore[arg-type]
                pending_id=t.pending_id,
                source_ref=t.source_ref,
            )
        )
    results = post_transfers(session, specs)
    assert all(r.status == "exists" for r in results), results
    session.commit()
    assert session.execute(select(Account.id, Account.debits_posted, Account.credits_posted)).all() == before


def _run(engine: Engine, sequence: list[tuple[list[tuple[object, ...]], bool]]) -> None:
    _reset(engine)
    factory = db.session_factory(engine)
    with factory() as session:
        ids = [
            accounts.card_liability(session, "01007120ffffffff", "71200000000000000001"),
            accounts.card_liability(session, "01007120ffffffff", "71200000000000000002"),
            accounts.issuer_float(session, "01007120ffffffff"),
            accounts.operator_payable(session, "bus-1"),
            accounts.get_or_create_account(
                session, AccountCode.DUE_FROM_XIAN, "interop:x", flags=AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS
            ),
        ]
        funding = [TransferSpec.single(f"fund{i}", ids[2], ids[i], 2000, 3) for i in (0, 1, 3)]
        post_transfers(session, [*funding, TransferSpec.single("fund4", ids[4], ids[2], 2000, 3)])
        session.commit()
        for ops, strict in sequence:
            specs = [_spec(raw, ids) for raw in ops]
            try:
                post_transfers(session, specs, strict=strict)
                session.commit()
            except LedgerBatchError:
                assert strict
                session.rollback()
            _check_books(session)
        _replay_all(session)
        _check_books(session)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=calls)
def test_any_sequence_keeps_the_books_balanced_sqlite(sequence: list[tuple[list[tuple[object, ...]], bool]]) -> None:
    engine = db.make_engine("sqlite://")
    try:
        _run(engine, sequence)
    finally:
        engine.dispose()


@pytest.mark.postgres
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=calls)
def test_any_sequence_keeps_the_books_balanced_postgres(
    pg_engine: Engine, sequence: list[tuple[list[tuple[object, ...]], bool]]
) -> None:
    _run(pg_engine, sequence)
