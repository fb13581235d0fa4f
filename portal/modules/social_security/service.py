"""The social security shell: imports, the personal record, statements, verification, corrections.

``docs/social-security.md``. The rules are ``rules.py`` and ``statement.py`` (pure); this
module reads and writes the tables of ``models.py`` around them.

- **Import, all or nothing.** The file's SHA-256 is looked up first: a file imported before
  answers its first import and writes nothing. Otherwise every row is checked (``rules``)
  and compared with what is on record (by its row key: person, month, insurance, payer): a
  row already imported with the same amounts is skipped, with other amounts it is a bad row
  (a change is a staff correction, never a re-import). Any bad row: nothing is written and
  the report lists them all. Else the import and its new entries are written in one
  transaction with the audit line; a racing import of the same file or rows loses on the
  unique keys and is answered as a replay (or checked again).
- **Card login** (assurance ``card``) is required for every personal record: an account
  login gets ``E_SS_CARD_LOGIN_REQUIRED``. The person is the account's keyed ID-number hash.
- **Corrections** are new entries (signed differences against a contribution) with the staff
  member's reason, written in one transaction with their audit line; nothing is edited, and
  the tables refuse UPDATE and DELETE (migration 0012).
- **Logs** carry ids, counts and codes only: no ID number, masked or not, and no name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from portal.accounts import CurrentSession
from portal.audit import AuditLog
from portal.errors import PortalError
from portal.identity import id_number_hash, mask_real_name, parse_id_number
from portal.models import PortalCitizen
from portal.web import SHANGHAI

from . import rules, statement
from .errors import SocialSecurityError, SsCode
from .models import SsEntry, SsImport, SsStatement
from .rules import ACCOUNT_INSURANCES, INSURANCES, Amounts, BadRow

log = logging.getLogger(__name__)

CARD_ASSURANCE: Final = "card"
KEYS_PER_QUERY: Final = 500
FILE_NAME_CHARS_MAX: Final = 128
_CORRECTION_KEY_LABEL: Final = "yikatong/social-security/correction/v1"
_STATEMENT_NUMBER: Final = re.compile(r"SS[0-9A-F]{20}")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did: ``imported`` (written now), ``replayed`` (this file was imported before)."""

    digest: str
    imported: bool
    replayed: bool
    import_id: int | None
    rows_total: int
    rows_new: int
    rows_same: int
    bad: tuple[BadRow, ...] = ()


@dataclass(frozen=True, slots=True)
class Person:
    """Whose record: the keyed hash (never shown) and the masked forms (shown)."""

    person_hash: str
    id_masked: str
    name_masked: str


@dataclass(frozen=True, slots=True)
class Cell:
    """One month of one insurance as on record (contributions plus their corrections)."""

    base_fen: int
    employer_fen: int
    personal_fen: int
    account_fen: int
    corrected: bool


@dataclass(frozen=True, slots=True)
class CorrectionLine:
    entry_id: int
    corrects_id: int
    month: str
    insurance: str
    base_fen: int
    employer_fen: int
    personal_fen: int
    reason: str
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class StatementLine:
    number: str
    year: int
    issued_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Record:
    """A citizen's record for one year, the balances to date, the years there are and the statements."""

    person: Person
    years: tuple[int, ...]
    year: int | None
    months: tuple[tuple[str, dict[str, Cell]], ...]  # (YYYY-MM, insurance -> cell), newest first
    totals: dict[str, Cell]
    balances_fen: dict[str, int]
    corrections: tuple[CorrectionLine, ...]
    statements: tuple[StatementLine, ...]


@dataclass(frozen=True, slots=True)
class StatementView:
    number: str
    content: dict[str, Any]
    raw: bytes
    code: str
    issued_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Verification:
    valid: bool
    content: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EntryView:
    """A contribution as staff see it (masked person), with what is on record after corrections."""

    entry_id: int
    person_masked: str
    month: str
    insurance: str
    payer_id: str
    imported: Amounts
    on_record: Amounts
    corrections: int


@dataclass(frozen=True, slots=True)
class CorrectionResult:
    correction_id: int
    entry_id: int
    delta: Amounts
    on_record: Amounts
    replayed: bool


def _amounts(row: SsEntry) -> Amounts:
    return Amounts(row.base_fen, row.employer_fen, row.personal_fen)


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class SocialSecurityService:
    sessions: sessionmaker[Session]
    lookup_key: bytes  # the portal's: ID-number hashes here are the accounts' (identity.id_number_hash)
    audit: AuditLog | None = None
    clock: Callable[[], dt.datetime] = _utcnow
    _statement_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._statement_key = statement.statement_key(self.lookup_key)
        if self.audit is None:
            self.audit = AuditLog(self.sessions, clock=self.clock)

    @property
    def _audit(self) -> AuditLog:
        assert self.audit is not None
        return self.audit

    def today(self) -> dt.date:
        return self.clock().astimezone(SHANGHAI).date()

    # --- import ------------------------------------------------------------------------------

    def import_file(self, raw: bytes, *, file_name: str, actor: str) -> ImportReport:
        """Import a contribution file, all or nothing; the same file again changes nothing."""
        digest = hashlib.sha256(raw).hexdigest()
        earlier = self._import_by_digest(digest)
        if earlier is not None:
            return earlier
        parsed = rules.parse_file(raw, today=self.today())
        for attempt in (1, 2):
            try:
                return self._write_import(parsed, digest, file_name, actor)
            except IntegrityError:
                earlier = self._import_by_digest(digest)
                if earlier is not None:
                    return earlier  # the same file, imported by a racing call
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _import_by_digest(self, digest: str) -> ImportReport | None:
        with self.sessions() as session:
            row = session.scalar(select(SsImport).where(SsImport.file_digest == digest))
            if row is None:
                return None
            return ImportReport(digest, False, True, row.id, row.rows_total, 0, row.rows_total)

    def _write_import(self, parsed: rules.Parsed, digest: str, file_name: str, actor: str) -> ImportReport:
        keyed = []
        for row in parsed.rows:
            person = id_number_hash(row.person, self.lookup_key)
            keyed.append((row, person, rules.row_key(person, row.month, row.insurance, row.payer_id)))
        bad = list(parsed.bad)
        total = len(parsed.rows) + len({b.line for b in parsed.bad})
        with self.sessions() as session, session.begin():
            existing: dict[str, SsEntry] = {}
            for chunk in _chunks([k for _, _, k in keyed], KEYS_PER_QUERY):
                for entry in session.scalars(select(SsEntry).where(SsEntry.entry_key.in_(chunk))):
                    existing[entry.entry_key] = entry
            new = []
            same = 0
            for row, person, key in keyed:
                before = existing.get(key)
                if before is None:
                    new.append((row, person, key))
                elif _amounts(before) == row.amounts:
                    same += 1
                else:
                    bad.append(
                        BadRow(
                            row.line,
                            "row",
                            SsCode.E_SS_ROW_CONFLICT,
                            f"imported before (entry {before.id}) with other amounts; ask for a correction",
                        )
                    )
            import_id = 0
            if not bad:  # a refused file writes nothing (the transaction only read)
                import_id = self._insert(session, new, digest, file_name, actor, total, same)
        if bad:
            bad.sort(key=lambda b: (b.line, rules.HEADER.index(b.field) if b.field in rules.HEADER else -1))
            log.info("social security import refused: %d bad row(s) of %d", len({b.line for b in bad}), total)
            self._audit.record_now(
                actor=actor,
                action="ss_import",
                target=f"file:{digest[:8]}",
                outcome=SsCode.E_SS_IMPORT_REFUSED.value,
                detail=f"{len(bad)} bad fields",
            )
            return ImportReport(digest, False, False, None, total, 0, same, tuple(bad))
        log.info("social security import %d: %d new row(s), %d already on record", import_id, len(new), same)
        return ImportReport(digest, True, False, import_id, total, len(new), same)

    def _insert(
        self,
        session: Session,
        new: list[tuple[rules.Row, str, str]],
        digest: str,
        file_name: str,
        actor: str,
        total: int,
        same: int,
    ) -> int:
        imported = SsImport(
            file_digest=digest,
            file_name=file_name[:FILE_NAME_CHARS_MAX] or "-",
            rows_total=total,
            rows_new=len(new),
            actor=actor,
            imported_at=self.clock(),
        )
        session.add(imported)
        session.flush()
        for row, person, key in new:
            session.add(
                SsEntry(
                    entry_key=key,
                    kind="contribution",
                    person_hash=person,
                    person_masked=row.person.masked,
                    month=row.month,
                    insurance=row.insurance,
                    payer_id=row.payer_id,
                    base_fen=row.amounts.base_fen,
                    employer_fen=row.amounts.employer_fen,
                    personal_fen=row.amounts.personal_fen,
                    account_fen=rules.account_fen(row.insurance, row.amounts),
                    import_id=imported.id,
                    corrects_id=None,
                    reason="",
                    actor=actor,
                    created_at=self.clock(),
                )
            )
        self._audit.record(
            session,
            actor=actor,
            action="ss_import",
            target=f"import:{imported.id}",
            detail=f"{len(new)} new, {same} already on record, file {digest[:8]}",
        )
        session.flush()
        return imported.id

    # --- the citizen's record ----------------------------------------------------------------

    def person_of(self, current: CurrentSession) -> Person:
        """The session's person; card login required (``E_SS_CARD_LOGIN_REQUIRED``)."""
        if current.assurance != CARD_ASSURANCE:
            raise SocialSecurityError(SsCode.E_SS_CARD_LOGIN_REQUIRED, "log in with the card to see this record")
        with self.sessions() as session:
            citizen = session.get(PortalCitizen, current.citizen_id)
            if citizen is None or citizen.id_number_hash is None or citizen.id_number_masked is None:
                raise SocialSecurityError(SsCode.E_SS_NO_ID_NUMBER, "this account has no ID number on file")
            return Person(citizen.id_number_hash, citizen.id_number_masked, mask_real_name(citizen.real_name))

    def _entries(self, session: Session, person_hash: str) -> list[SsEntry]:
        stmt = select(SsEntry).where(SsEntry.person_hash == person_hash).order_by(SsEntry.month, SsEntry.id)
        return list(session.scalars(stmt))

    def record(self, person: Person, year: int | None = None) -> Record:
        with self.sessions() as session:
            entries = self._entries(session, person.person_hash)
            statements = session.scalars(
                select(SsStatement)
                .where(SsStatement.person_hash == person.person_hash)
                .order_by(SsStatement.issued_at.desc())
                .limit(50)
            ).all()
            statement_lines = tuple(StatementLine(s.number, s.year, s.issued_at) for s in statements)
        years = tuple(sorted({int(e.month[:4]) for e in entries}, reverse=True))
        if year is None:
            year = years[0] if years else None
        elif year not in years:
            raise SocialSecurityError(SsCode.E_SS_YEAR, f"there is no record for {year}")
        balances = {name: sum(e.account_fen for e in entries if e.insurance == name) for name in ACCOUNT_INSURANCES}
        chosen = [e for e in entries if year is not None and e.month.startswith(f"{year:04d}-")]
        grid = _grid(chosen)
        months = tuple(sorted(grid.items(), reverse=True))
        totals = {name: _sum_cells([cells[name] for _, cells in months if name in cells]) for name in INSURANCES}
        corrections = tuple(
            CorrectionLine(
                e.id,
                e.corrects_id or 0,
                e.month,
                e.insurance,
                e.base_fen,
                e.employer_fen,
                e.personal_fen,
                e.reason,
                e.created_at,
            )
            for e in chosen
            if e.kind == "correction"
        )
        return Record(person, years, year, months, totals, balances, corrections, statement_lines)

    # --- statements --------------------------------------------------------------------------

    def figures(self, person: Person, year: int) -> statement.Figures:
        with self.sessions() as session:
            entries = [e for e in self._entries(session, person.person_hash) if int(e.month[:4]) <= year]
        chosen = [e for e in entries if int(e.month[:4]) == year]
        if not chosen:
            raise SocialSecurityError(SsCode.E_SS_YEAR, f"there is no record for {year}")
        grid = _grid(chosen)
        per_insurance = []
        for name in INSURANCES:
            cells = [cells[name] for cells in grid.values() if name in cells]
            paid = [c for c in cells if c.employer_fen + c.personal_fen > 0]
            total = _sum_cells(cells)
            per_insurance.append(
                statement.InsuranceYear(name, len(paid), total.employer_fen, total.personal_fen, total.account_fen)
            )
        balances = tuple(
            (name, sum(e.account_fen for e in entries if e.insurance == name)) for name in ACCOUNT_INSURANCES
        )
        return statement.Figures(
            person_masked=person.id_masked,
            name_masked=person.name_masked,
            year=year,
            through_month=max(e.month for e in chosen),
            insurances=tuple(per_insurance),
            balances_fen=balances,
            as_of_entry=max(e.id for e in entries),
        )

    def issue_statement(self, person: Person, year: int) -> str:
        """The statement of the year's figures as they are now: the same figures again, the same statement."""
        figures = self.figures(person, year)
        number = statement.statement_number(self._statement_key, person.person_hash, figures)
        content = statement.content_of(figures, issued_on=self.today().isoformat())
        try:
            with self.sessions() as session, session.begin():
                if session.get(SsStatement, number) is None:
                    session.add(
                        SsStatement(
                            number=number,
                            person_hash=person.person_hash,
                            year=year,
                            content=content.decode("utf-8"),
                            issued_at=self.clock(),
                        )
                    )
        except IntegrityError:
            pass  # a racing request issued it: the same number, the same figures
        return number

    def statement_of(self, person: Person, number: str) -> StatementView:
        """One of this person's statements (another's, or none: ``E_SS_STATEMENT_NOT_FOUND``)."""
        row = self._statement_row(number)
        if row is None or row.person_hash != person.person_hash:
            raise SocialSecurityError(SsCode.E_SS_STATEMENT_NOT_FOUND, "no such statement among yours")
        return self._view(row)

    def _statement_row(self, number: str) -> SsStatement | None:
        text = number.strip().upper()[:32]
        if _STATEMENT_NUMBER.fullmatch(text) is None:
            return None
        with self.sessions() as session:
            return session.get(SsStatement, text)

    def _view(self, row: SsStatement) -> StatementView:
        raw = row.content.encode("utf-8")
        code = statement.verification_code(self._statement_key, row.number, raw)
        return StatementView(row.number, statement.read_content(row.content), raw, code, row.issued_at)

    def pdf(self, view: StatementView, *, verify_url: str) -> bytes:
        return statement.render_pdf(view.number, view.raw, view.code, verify_url=verify_url)

    def verify(self, number: str, code: str) -> Verification:
        """Valid when the statement exists and the code is its content's; the same answer otherwise."""
        row = self._statement_row(number)
        if row is None:
            statement.check_code(self._statement_key, "SS" + "0" * 20, b"", code)  # the same work either way
            return Verification(False)
        raw = row.content.encode("utf-8")
        if not statement.check_code(self._statement_key, row.number, raw, code):
            return Verification(False)
        return Verification(True, statement.read_content(row.content))

    # --- staff -------------------------------------------------------------------------------

    def entries_for_staff(self, id_number: str, *, actor: str) -> list[EntryView]:
        """A person's contributions by the ID number typed at the counter (looked up by its hash)."""
        try:
            rid = parse_id_number(id_number, today=self.today())
        except PortalError as exc:
            raise SocialSecurityError(SsCode.E_SS_ROW_ID_NUMBER, exc.message) from None
        person = id_number_hash(rid, self.lookup_key)
        with self.sessions() as session, session.begin():
            entries = self._entries(session, person)
            self._audit.record(
                session,
                actor=actor,
                action="ss_entries_view",
                target=f"id:{rid.masked}",
                detail=f"{len(entries)} entries",
            )
        by_original: dict[int, list[SsEntry]] = defaultdict(list)
        for e in entries:
            if e.kind == "correction" and e.corrects_id is not None:
                by_original[e.corrects_id].append(e)
        out = []
        for e in entries:
            if e.kind != "contribution":
                continue
            on_record = _amounts(e)
            for c in by_original[e.id]:
                on_record = on_record + _amounts(c)
            out.append(
                EntryView(
                    e.id,
                    e.person_masked,
                    e.month,
                    e.insurance,
                    e.payer_id,
                    _amounts(e),
                    on_record,
                    len(by_original[e.id]),
                )
            )
        return out

    def correct(self, entry_id: int, target: Amounts, reason: str, *, actor: str) -> CorrectionResult:
        """A correction entry taking the contribution to ``target``; a repeat of the last one answers it."""
        try:
            text = rules.check_reason(reason)
            with self.sessions() as session, session.begin():
                original = session.scalar(select(SsEntry).where(SsEntry.id == entry_id).with_for_update())
                if original is None or original.kind != "contribution":
                    raise SocialSecurityError(SsCode.E_SS_ENTRY_NOT_FOUND, f"no contribution entry {entry_id}")
                earlier = list(
                    session.scalars(select(SsEntry).where(SsEntry.corrects_id == entry_id).order_by(SsEntry.id))
                )
                current = _amounts(original)
                for c in earlier:
                    current = current + _amounts(c)
                if earlier and current == target and earlier[-1].reason == text:
                    return CorrectionResult(earlier[-1].id, entry_id, _amounts(earlier[-1]), current, True)
                delta = rules.correction_delta(original.insurance, current, target)
                seq = len(earlier) + 1
                key = hashlib.sha256(f"{_CORRECTION_KEY_LABEL}|{entry_id}|{seq}".encode()).hexdigest()
                row = SsEntry(
                    entry_key=key,
                    kind="correction",
                    person_hash=original.person_hash,
                    person_masked=original.person_masked,
                    month=original.month,
                    insurance=original.insurance,
                    payer_id=original.payer_id,
                    base_fen=delta.base_fen,
                    employer_fen=delta.employer_fen,
                    personal_fen=delta.personal_fen,
                    account_fen=rules.account_fen(original.insurance, target)
                    - rules.account_fen(original.insurance, current),
                    import_id=None,
                    corrects_id=entry_id,
                    reason=text,
                    actor=actor,
                    created_at=self.clock(),
                )
                session.add(row)
                session.flush()
                detail = (
                    f"{original.insurance} {original.month}: base {delta.base_fen:+d}, employer "
                    f"{delta.employer_fen:+d}, personal {delta.personal_fen:+d} fen; reason: {text}"
                )
                self._audit.record(
                    session, actor=actor, action="ss_correction", target=f"entry:{entry_id}", detail=detail
                )
                result = CorrectionResult(row.id, entry_id, delta, target, False)
        except SocialSecurityError as exc:
            self._audit.record_now(
                actor=actor, action="ss_correction", target=f"entry:{entry_id}", outcome=exc.code.value
            )
            raise
        except IntegrityError:
            raise SocialSecurityError(
                SsCode.E_SS_CORRECTION_NOTHING, "another correction of this entry was made at the same time; look again"
            ) from None
        log.info("social security correction %d of entry %d by %s", result.correction_id, entry_id, actor)
        return result


def _grid(entries: Iterable[SsEntry]) -> dict[str, dict[str, Cell]]:
    """Month -> insurance -> what is on record (every payer and every correction summed)."""
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for e in entries:
        cell = sums[(e.month, e.insurance)]
        cell[0] += e.base_fen
        cell[1] += e.employer_fen
        cell[2] += e.personal_fen
        cell[3] += e.account_fen
        cell[4] += e.kind == "correction"
    grid: dict[str, dict[str, Cell]] = defaultdict(dict)
    for (month, insurance), (base, employer, personal, account, corrected) in sums.items():
        grid[month][insurance] = Cell(base, employer, personal, account, corrected > 0)
    return dict(grid)


def _sum_cells(cells: Iterable[Cell]) -> Cell:
    base = employer = personal = account = 0
    corrected = False
    for c in cells:
        base, employer, personal = base + c.base_fen, employer + c.employer_fen, personal + c.personal_fen
        account += c.account_fen
        corrected = corrected or c.corrected
    return Cell(base, employer, personal, account, corrected)


def entries_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(SsEntry)) or 0)


__all__ = [
    "CARD_ASSURANCE",
    "Cell",
    "CorrectionLine",
    "CorrectionResult",
    "EntryView",
    "ImportReport",
    "Person",
    "Record",
    "SocialSecurityService",
    "StatementLine",
    "StatementView",
    "Verification",
    "entries_count",
]
