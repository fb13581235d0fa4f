"""Social security: the import's rules and its all-or-nothing, idempotent shell, corrections, statements.

SQLite and PostgreSQL (the portal's ``engine`` fixture: a migrated, empty database each), the
real tables and triggers of migration 0012. The personal record's card-login rule is pinned
here on the service and in ``test_social_security_pages.py`` on the pages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from clearing import db
from portal.accounts import CurrentSession
from portal.audit import check_clean
from portal.identity import id_number_hash, parse_id_number
from portal.models import PortalAuditEntry
from portal.modules.social_security import rules, statement
from portal.modules.social_security.errors import SocialSecurityError, SsCode
from portal.modules.social_security.models import SsEntry, SsImport, SsStatement
from portal.modules.social_security.rules import Amounts
from portal.modules.social_security.service import Person, SocialSecurityService
from tests.portal.conftest import ALICE, BOB, TEST_LOOKUP_KEY, account_service

NOW = dt.datetime(2026, 12, 3, 2, 0, tzinfo=dt.UTC)
TODAY = dt.date(2026, 12, 3)
PAYER = "914403001922038216"  # a published unified social credit code (GB 32100 check character 6)
OTHER_PAYER = "91110108551385082Q"
HEADER = ",".join(rules.HEADER)


def row(
    id_number: str = ALICE["id_number"],
    month: str = "2026-01",
    insurance: str = "pension",
    payer: str = PAYER,
    base: str = "600000",
    employer: str = "96000",
    personal: str = "48000",
) -> str:
    return ",".join((id_number, month, insurance, payer, base, employer, personal))


def csv_file(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join((header, *rows)) + "\n").encode("utf-8")


def good_file() -> bytes:
    return csv_file(
        row(month="2026-01"),
        row(month="2026-01", insurance="medical", employer="39000", personal="12000"),
        row(month="2026-01", insurance="work_injury", employer="2400", personal="0"),
        row(month="2026-02"),
        row(id_number=BOB["id_number"], month="2026-02", payer=OTHER_PAYER),
    )


def service(engine: Engine) -> SocialSecurityService:
    return SocialSecurityService(sessions=db.session_factory(engine), lookup_key=TEST_LOOKUP_KEY, clock=lambda: NOW)


def person(who: dict[str, str] = ALICE) -> Person:
    rid = parse_id_number(who["id_number"], today=TODAY)
    return Person(id_number_hash(rid, TEST_LOOKUP_KEY), rid.masked, "欧**")


def count(engine: Engine, table: Any) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


# --- the pure rules -----------------------------------------------------------------------


def test_unified_social_credit_codes_check_against_published_codes() -> None:
    for code in ("914403001922038216", "91110108551385082Q", "91110000802100433B"):
        assert rules.is_uscc(code), code
    assert not rules.is_uscc("914403001922038217")  # the check character off by one
    assert not rules.is_uscc("914403001922O38216")  # O is not in the alphabet
    assert not rules.is_uscc("91440300192203821")  # 17 characters


BAD_ROWS = [
    ("id_number", SsCode.E_SS_ROW_ID_NUMBER, row(id_number="610402199001011239")),  # wrong check character
    ("id_number", SsCode.E_SS_ROW_ID_NUMBER, row(id_number="6104021990")),
    ("month", SsCode.E_SS_ROW_MONTH, row(month="2026-13")),
    ("month", SsCode.E_SS_ROW_MONTH, row(month="2027-01")),  # the future
    ("month", SsCode.E_SS_ROW_MONTH, row(month="1990-12")),  # before the personal accounts
    ("month", SsCode.E_SS_ROW_MONTH, row(month="2026/01")),
    ("insurance", SsCode.E_SS_ROW_INSURANCE, row(insurance="housing_fund")),
    ("payer_id", SsCode.E_SS_ROW_PAYER, row(payer="914403001922038217")),
    ("base_fen", SsCode.E_SS_ROW_AMOUNT, row(base="6000.00")),  # yuan, not fen
    ("employer_fen", SsCode.E_SS_ROW_AMOUNT, row(employer="-5")),
    ("personal_fen", SsCode.E_SS_ROW_AMOUNT, row(personal="４８０００")),  # full-width digits
    ("base_fen", SsCode.E_SS_ROW_AMOUNT, row(base="99999999999")),
    ("personal_fen", SsCode.E_SS_ROW_RULE, row(insurance="work_injury", employer="2400", personal="100")),
    ("employer_fen", SsCode.E_SS_ROW_RULE, row(base="1000", employer="900", personal="200")),
    ("base_fen", SsCode.E_SS_ROW_RULE, row(base="0", employer="0", personal="10")),
    ("employer_fen", SsCode.E_SS_ROW_RULE, row(employer="0", personal="0")),  # nothing paid
    ("row", SsCode.E_SS_ROW_COLUMNS, row() + ",extra"),
]


@pytest.mark.parametrize(("field", "code", "bad"), BAD_ROWS, ids=[f"{f}-{c.value}-{i}" for i, (f, c, _) in
                                                                   enumerate(BAD_ROWS)])  # fmt: skip
def test_each_kind_of_bad_row_is_reported_with_its_line_field_and_code(field: str, code: SsCode, bad: str) -> None:
    parsed = rules.parse_file(csv_file(row(month="2026-03"), bad, row(month="2026-04")), today=TODAY)
    assert [(b.line, b.field, b.code) for b in parsed.bad] == [(3, field, code)]
    assert [r.line for r in parsed.rows] == [2, 4]
    for b in parsed.bad:  # the reason names no person
        assert ALICE["id_number"] not in b.reason and ALICE["id_number"][6:14] not in b.reason


def test_a_row_repeated_in_the_file_is_a_duplicate_naming_the_first_line() -> None:
    parsed = rules.parse_file(csv_file(row(), row(month="2026-02"), row()), today=TODAY)
    assert [(b.line, b.field, b.code) for b in parsed.bad] == [(4, "row", SsCode.E_SS_ROW_DUPLICATE)]
    assert "line 2" in parsed.bad[0].reason


def test_every_bad_field_of_a_row_is_reported_and_blank_lines_are_skipped() -> None:
    raw = csv_file(row(month="bad", insurance="x", payer="y"), "", row(month="2026-05"))
    parsed = rules.parse_file(raw, today=TODAY)
    assert [(b.line, b.field) for b in parsed.bad] == [(2, "month"), (2, "insurance"), (2, "payer_id")]
    assert len(parsed.rows) == 1


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (csv_file(row(), header="id,month"), SsCode.E_SS_FILE_HEADER),
        (b"", SsCode.E_SS_FILE_HEADER),
        (csv_file(), SsCode.E_SS_FILE_EMPTY),
        (HEADER.encode() + b"\n\xff\xfe\n", SsCode.E_SS_FILE_ENCODING),
        (b"x" * (rules.FILE_BYTES_MAX + 1), SsCode.E_SS_FILE_TOO_LARGE),
    ],
)
def test_a_file_that_is_not_a_contribution_file_is_refused_whole(raw: bytes, code: SsCode) -> None:
    with pytest.raises(SocialSecurityError) as caught:
        rules.parse_file(raw, today=TODAY)
    assert caught.value.code is code


def test_a_bom_and_crlf_line_ends_are_read_as_the_bureau_exports_them() -> None:
    raw = "\ufeff".encode() + csv_file(row(), row(month="2026-02")).replace(b"\n", b"\r\n")
    assert len(rules.parse_file(raw, today=TODAY).rows) == 2


def test_only_the_personal_share_of_pension_and_medical_goes_to_the_personal_account() -> None:
    paid = Amounts(600_000, 96_000, 48_000)
    assert rules.account_fen("pension", paid) == 48_000
    assert rules.account_fen("medical", paid) == 48_000
    assert rules.account_fen("unemployment", paid) == 0


amounts = st.builds(Amounts, st.integers(1, 10**7), st.integers(0, 10**6), st.integers(0, 10**6)).filter(
    lambda a: 0 < a.employer_fen + a.personal_fen <= a.base_fen
)


@settings(max_examples=60, deadline=None)
@given(current=amounts, target=amounts)
def test_a_correction_is_the_difference_that_takes_the_record_to_its_target(current: Amounts, target: Amounts) -> None:
    if current == target:
        with pytest.raises(SocialSecurityError):
            rules.correction_delta("pension", current, target)
        return
    delta = rules.correction_delta("pension", current, target)
    assert current + delta == target


def test_a_verification_code_changes_with_any_byte_of_the_content_or_the_number() -> None:
    key = statement.statement_key(TEST_LOOKUP_KEY)
    content = b'{"v":1,"year":2026}'
    code = statement.verification_code(key, "SS" + "A" * 20, content)
    assert len(code) == 19 and code.count("-") == 3
    assert statement.check_code(key, "SS" + "A" * 20, content, code.lower().replace("-", " "))
    assert not statement.check_code(key, "SS" + "A" * 20, content.replace(b"2026", b"2025"), code)
    assert not statement.check_code(key, "SS" + "B" * 20, content, code)
    assert not statement.check_code(statement.statement_key(bytes(32)), "SS" + "A" * 20, content, code)


# --- the import shell ----------------------------------------------------------------------


def test_a_good_file_is_imported_and_the_same_file_again_changes_nothing(engine: Engine) -> None:
    svc = service(engine)
    first = svc.import_file(good_file(), file_name="employer.csv", actor="cli")
    assert (first.imported, first.replayed, first.rows_new, first.bad) == (True, False, 5, ())
    again = svc.import_file(good_file(), file_name="employer.csv", actor="cli")
    assert (again.imported, again.replayed, again.import_id) == (False, True, first.import_id)
    assert count(engine, SsEntry) == 5 and count(engine, SsImport) == 1
    reexport = svc.import_file(good_file().replace(b"\n", b"\r\n"), file_name="again.csv", actor="cli")
    assert (reexport.imported, reexport.rows_new, reexport.rows_same) == (True, 0, 5)
    assert count(engine, SsEntry) == 5


def test_a_file_with_one_bad_row_imports_nothing_at_all(engine: Engine) -> None:
    svc = service(engine)
    raw = csv_file(row(), row(month="2026-02"), row(month="2026-13"), row(month="2026-03"))
    report = svc.import_file(raw, file_name="bad.csv", actor="cli")
    assert not report.imported and [(b.line, b.field) for b in report.bad] == [(4, "month")]
    assert count(engine, SsEntry) == 0 and count(engine, SsImport) == 0
    with Session(engine) as session:
        line = session.scalars(select(PortalAuditEntry).where(PortalAuditEntry.action == "ss_import")).one()
    assert line.outcome == "E_SS_IMPORT_REFUSED"


def test_a_row_imported_before_with_other_amounts_is_a_conflict_and_refuses_the_file(engine: Engine) -> None:
    svc = service(engine)
    assert svc.import_file(good_file(), file_name="a.csv", actor="cli").imported
    changed = csv_file(row(month="2026-03"), row(month="2026-01", employer="96001"))
    report = svc.import_file(changed, file_name="b.csv", actor="cli")
    assert [(b.line, b.code) for b in report.bad] == [(3, SsCode.E_SS_ROW_CONFLICT)]
    assert count(engine, SsEntry) == 5  # not even 2026-03


def test_the_record_is_append_only_in_the_database(engine: Engine) -> None:
    assert service(engine).import_file(good_file(), file_name="a.csv", actor="cli").imported
    for sql in (
        "UPDATE ss_entries SET employer_fen = 1",
        "DELETE FROM ss_entries",
        "UPDATE ss_imports SET actor = 'x'",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(sql))
    assert count(engine, SsEntry) == 5


# --- the personal record, corrections --------------------------------------------------------


def test_the_record_needs_card_login_and_an_id_number_on_file(engine: Engine) -> None:
    accounts = account_service(engine)
    accounts.register(ALICE["mobile"], ALICE["password"], ALICE["real_name"], ALICE["id_number"], client_ip="t")
    new = accounts.login(ALICE["mobile"], ALICE["password"], client_ip="t", previous_token=None)
    svc = service(engine)
    with pytest.raises(SocialSecurityError) as caught:
        svc.person_of(new.session)
    assert caught.value.code is SsCode.E_SS_CARD_LOGIN_REQUIRED and caught.value.status == 403
    card_session = dataclasses.replace(new.session, assurance="card")
    assert svc.person_of(card_session) == dataclasses.replace(person(), name_masked="欧阳**")
    nobody = CurrentSession("x" * 64, 999_999, "t", "card", NOW)
    with pytest.raises(SocialSecurityError) as caught:
        svc.person_of(nobody)
    assert caught.value.code is SsCode.E_SS_NO_ID_NUMBER


def test_a_correction_is_a_new_entry_with_its_reason_and_an_audit_line(engine: Engine) -> None:
    svc = service(engine)
    svc.import_file(good_file(), file_name="a.csv", actor="cli")
    [entry] = [e for e in svc.entries_for_staff(ALICE["id_number"], actor="staff:clerk1")
               if e.month == "2026-01" and e.insurance == "pension"]  # fmt: skip
    target = Amounts(620_000, 99_200, 49_600)
    result = svc.correct(entry.entry_id, target, "base keyed short by the employer", actor="staff:clerk1")
    assert not result.replayed and result.delta == Amounts(20_000, 3_200, 1_600)
    replay = svc.correct(entry.entry_id, target, "base keyed short by the employer", actor="staff:clerk1")
    assert replay.replayed and replay.correction_id == result.correction_id
    with Session(engine) as session:
        original = session.get(SsEntry, entry.entry_id)
        correction = session.get(SsEntry, result.correction_id)
        audit = session.scalars(select(PortalAuditEntry).where(PortalAuditEntry.action == "ss_correction")).all()
    assert original is not None and (original.base_fen, original.employer_fen) == (600_000, 96_000)  # untouched
    assert correction is not None and correction.kind == "correction" and correction.corrects_id == entry.entry_id
    assert correction.account_fen == 1_600 and correction.reason == "base keyed short by the employer"
    assert [(a.actor, a.target, a.outcome) for a in audit] == [("staff:clerk1", f"entry:{entry.entry_id}", "ok")]
    record = svc.record(person(), 2026)
    cell = dict(record.months)["2026-01"]["pension"]
    assert (cell.employer_fen, cell.personal_fen, cell.corrected) == (99_200, 49_600, True)
    assert record.balances_fen["pension"] == 48_000 + 49_600
    assert [c.reason for c in record.corrections] == ["base keyed short by the employer"]


@pytest.mark.parametrize(
    ("target", "reason", "code"),
    [
        (Amounts(600_000, 96_000, 48_000), "nothing changes here", SsCode.E_SS_CORRECTION_NOTHING),
        (Amounts(1_000, 900, 200), "shares above the base", SsCode.E_SS_CORRECTION_AMOUNT),
        (Amounts(0, 0, 0), "zeroed by mistake", SsCode.E_SS_CORRECTION_AMOUNT),
        (Amounts(620_000, 99_200, 49_600), "no", SsCode.E_SS_CORRECTION_REASON),
        (Amounts(620_000, 99_200, 49_600), "id 610402199001011238", SsCode.E_SS_CORRECTION_REASON),
    ],
)
def test_a_correction_that_cannot_be_made_is_refused_and_audited(
    engine: Engine, target: Amounts, reason: str, code: SsCode
) -> None:
    svc = service(engine)
    svc.import_file(good_file(), file_name="a.csv", actor="cli")
    entry = svc.entries_for_staff(ALICE["id_number"], actor="staff:clerk1")[0]
    with pytest.raises(SocialSecurityError) as caught:
        svc.correct(entry.entry_id, target, reason, actor="staff:clerk1")
    assert caught.value.code is code
    assert count(engine, SsEntry) == 5
    with pytest.raises(SocialSecurityError) as missing:
        svc.correct(10**9, Amounts(620_000, 99_200, 49_600), "a long enough reason", actor="staff:clerk1")
    assert missing.value.code is SsCode.E_SS_ENTRY_NOT_FOUND


# --- statements --------------------------------------------------------------------------


def test_a_statement_is_issued_once_per_figures_renders_the_same_pdf_and_verifies(engine: Engine) -> None:
    svc = service(engine)
    svc.import_file(good_file(), file_name="a.csv", actor="cli")
    me = person()
    number = svc.issue_statement(me, 2026)
    assert svc.issue_statement(me, 2026) == number and count(engine, SsStatement) == 1
    view = svc.statement_of(me, number)
    assert view.content["person"] == "6104**********" + ALICE["id_number"][-4:]
    assert view.content["balances_fen"] == {"pension": 96_000, "medical": 12_000}
    pension = next(i for i in view.content["insurances"] if i["insurance"] == "pension")
    assert (pension["months"], pension["employer_fen"], pension["personal_fen"]) == (2, 192_000, 96_000)
    first = svc.pdf(view, verify_url="https://portal.example/social-security/verify")
    again = svc.pdf(svc.statement_of(me, number), verify_url="https://portal.example/social-security/verify")
    assert first == again and first.startswith(b"%PDF-") and b"STSong-Light" in first
    assert ALICE["id_number"].encode() not in first
    assert svc.verify(number, view.code).valid
    assert svc.verify(number.lower(), view.code.replace("-", "")).valid
    tampered = view.code[:-1] + ("A" if view.code[-1] != "A" else "B")
    assert svc.verify(number, tampered) == svc.verify("SS" + "0" * 20, view.code) == svc.verify("nonsense", "x")
    assert not svc.verify(number, tampered).valid
    with pytest.raises(SocialSecurityError) as caught:
        svc.statement_of(person(BOB), number)  # another person's statement: as if none
    assert caught.value.code is SsCode.E_SS_STATEMENT_NOT_FOUND


def test_a_correction_makes_a_new_statement_and_the_old_one_still_verifies(engine: Engine) -> None:
    svc = service(engine)
    svc.import_file(good_file(), file_name="a.csv", actor="cli")
    me = person()
    old = svc.issue_statement(me, 2026)
    entry = svc.entries_for_staff(ALICE["id_number"], actor="staff:clerk1")[0]
    svc.correct(entry.entry_id, Amounts(620_000, 99_200, 49_600), "base keyed short", actor="staff:clerk1")
    new = svc.issue_statement(me, 2026)
    assert new != old
    assert svc.verify(old, svc.statement_of(me, old).code).valid
    with pytest.raises(SocialSecurityError):
        svc.issue_statement(me, 2019)


def test_no_id_number_reaches_a_log_line_or_the_audit_log(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    svc = service(engine)
    with caplog.at_level(logging.DEBUG):
        svc.import_file(good_file(), file_name="a.csv", actor="cli")
        svc.import_file(csv_file(row(month="2026-13")), file_name="bad.csv", actor="cli")
        entry = svc.entries_for_staff(ALICE["id_number"], actor="staff:clerk1")[0]
        svc.correct(entry.entry_id, Amounts(620_000, 99_200, 49_600), "base keyed short", actor="staff:clerk1")
        svc.issue_statement(person(), 2026)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    with Session(engine) as session:
        audit = "\n".join(f"{a.target} {a.detail}" for a in session.scalars(select(PortalAuditEntry)))
    for secret in (ALICE["id_number"], BOB["id_number"], ALICE["id_number"][6:14]):
        assert secret not in logged and secret not in audit
    check_clean(audit, "audit")
