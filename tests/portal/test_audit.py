"""The audit log is append-only in the database itself, and holds masked forms only."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from clearing import db
from portal.audit import AuditLog, card_target, check_clean, mask_asn
from portal.models import PortalAuditEntry


def _log(engine: Engine) -> AuditLog:
    return AuditLog(db.session_factory(engine), clock=lambda: dt.datetime(2026, 12, 2, 8, tzinfo=dt.UTC))


def test_lines_are_written_and_read_newest_first(engine: Engine) -> None:
    log = _log(engine)
    log.record_now(actor="staff:clerk1", action="card_search", target="search:mobile:139****5678", detail="1 cards")
    target = card_target("01007120ffffffff", "3104" + "0" * 16)
    log.record_now(actor="staff:clerk1", action="replacement", target=target, outcome="E_LOST_TOO_EARLY")
    lines = log.lines()
    assert [x.action for x in lines] == ["replacement", "card_search"]
    assert lines[0].target == "card:01007120ffffffff:3104************0000" and lines[0].outcome == "E_LOST_TOO_EARLY"
    assert [x.action for x in log.lines(before_id=lines[0].id)] == ["card_search"]
    assert [x.action for x in log.lines(action="card_search")] == ["card_search"]


@pytest.mark.parametrize(
    "statement",
    [
        update(PortalAuditEntry).values(outcome="ok"),
        update(PortalAuditEntry).values(detail=""),
        delete(PortalAuditEntry),
    ],
    ids=["update-outcome", "update-detail", "delete"],
)
def test_the_database_refuses_to_edit_or_delete_a_line(engine: Engine, statement: object) -> None:
    _log(engine).record_now(actor="staff:clerk1", action="unblock", outcome="E_LOST_NOT_REPORTED")
    with pytest.raises(DBAPIError, match="append-only"), Session(engine) as session, session.begin():
        session.execute(statement)  # type: ignore[call-overload]
    with Session(engine) as session:
        assert session.scalar(select(func.count(PortalAuditEntry.id))) == 1
        assert session.scalar(select(PortalAuditEntry.outcome)) == "E_LOST_NOT_REPORTED"


@pytest.mark.postgres
def test_postgres_refuses_truncate_too(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no TRUNCATE")
    _log(engine).record_now(actor="cli", action="staff_add", target="staff:root1")
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("TRUNCATE portal_audit_log"))


def test_a_line_in_a_rolled_back_action_is_gone_with_it(engine: Engine) -> None:
    log = _log(engine)
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        log.record(session, actor="staff:clerk1", action="replacement")
        raise RuntimeError("the action failed")
    assert log.lines() == []


def test_unmasked_numbers_never_reach_the_log() -> None:
    for bad in ("13912345678", "610402199001011234", "card 31040000000000001234", "tel 13912345678 x"):
        with pytest.raises(ValueError, match="unmasked"):
            check_clean(bad, "detail")
    for good in ("139****5678", "6104**********123X", card_target("01007120ffffffff", "31040000000000001234"),
                 "moved 4600 fen", "issuer 01007120ffffffff"):  # fmt: skip
        assert check_clean(good, "detail") == good
    assert mask_asn("31040000000000001234") == "3104************1234"
    assert mask_asn("short") == "*****"


def test_unknown_actions_are_a_programming_error(engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown audit action"):
        _log(engine).record_now(actor="staff:x", action="coffee")
