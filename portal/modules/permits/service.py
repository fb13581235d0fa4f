"""The permits shell: applications in the database, the rules of ``rules``, the audit, the notices.

``docs/permits.md``. Every change runs the pure ``rules.apply`` on the stored application and
writes the result, a ``permit_steps`` row and (for staff) the audit line in one transaction.

- **Replays change nothing.** A submission's id is derived from its form's nonce (the pages
  do it), so the same form twice names one application. A step's form carries the version it
  was shown at: if the application has moved on and its last step is the one posted, the post
  was a replay and nothing is written (no step, no audit line); any other mismatch is
  ``E_PERMIT_STALE``. A document is stored once per application (its SHA-256).
- **Only the citizen's own.** Every citizen read names the citizen; another citizen's
  application is the same ``E_PERMIT_NOT_FOUND`` as one that does not exist.
- **Notices** to the citizen are the steps that concern them (asked for materials, accepted,
  refused, extended, decided, certificate issued), shown on their permits page; no SMS here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from portal.audit import AuditLog
from portal.modules.permits import rules
from portal.modules.permits.errors import PermitCode, PermitError
from portal.modules.permits.models import PermitApplication, PermitDocument, PermitStep
from portal.modules.permits.rules import Act, Application, Deadline, State, Step

SHANGHAI: Final = ZoneInfo("Asia/Shanghai")
TODAY_ENV: Final = "YIKATONG_PERMITS_TODAY"
DOCUMENT_BYTES_MAX: Final = 2 * 1024 * 1024
DOCUMENTS_MAX: Final = 10
TITLE_CHARS_MAX: Final = 200
FILENAME_CHARS_MAX: Final = 100
LIST_MAX: Final = 500
DASHBOARD_ROWS_MAX: Final = 100_000
_APPLICATION_ID: Final = re.compile(r"pa_[0-9a-f]{24}")

# The municipal permits offered online (a demo catalogue; each is a kind with its words).
KINDS: Final[dict[str, str]] = {
    "food_business": "Food business licence",
    "outdoor_sign": "Outdoor advertising sign",
    "road_occupation": "Temporary use of a city road",
    "tree_felling": "Felling or moving a city tree",
}
NOTICE_STEPS: Final = frozenset(
    {
        Step.REQUEST_MATERIALS,
        Step.ACCEPT,
        Step.REFUSE,
        Step.EXTEND,
        Step.GRANT,
        Step.DENY,
        Step.ISSUE_CERTIFICATE,
    }
)
# The sniffed types: the first bytes decide, never the name or the browser's claim.
_MAGIC: Final = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)


def today_in_shanghai() -> dt.date:
    """Today in Asia/Shanghai, or the day ``YIKATONG_PERMITS_TODAY`` names (demos and browser tests only)."""
    pinned = os.environ.get(TODAY_ENV)
    if pinned:
        return dt.date.fromisoformat(pinned)
    return dt.datetime.now(SHANGHAI).date()


def is_application_id(text: str) -> bool:
    return _APPLICATION_ID.fullmatch(text) is not None


def audit_target(application_id: str) -> str:
    """The audit's name of an application: shortened, so it never reads as a long number."""
    return f"permit:{application_id[:11]}…{application_id[-4:]}"


def sniff(content: bytes) -> str:
    for magic, content_type in _MAGIC:
        if content.startswith(magic):
            return content_type
    raise PermitError(PermitCode.E_PERMIT_DOCUMENT_TYPE, "a document is a PDF, PNG or JPEG file")


def clean_filename(name: str) -> str:
    """The name shown for a document: its last path part, printable characters only, bounded."""
    base = re.split(r"[\\/]", name)[-1]
    kept = "".join(c for c in base if unicodedata.category(c)[0] not in ("C", "Z") or c == " ").strip(" .")
    return kept[:FILENAME_CHARS_MAX] or "document"


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    content: bytes


@dataclass(frozen=True, slots=True)
class DocumentView:
    id: int
    filename: str
    content_type: str
    size_bytes: int
    uploaded_at: dt.datetime


@dataclass(frozen=True, slots=True)
class StepView:
    version: int
    step: str
    actor: str
    at: dt.datetime
    day: dt.date
    reason: str


@dataclass(frozen=True, slots=True)
class ApplicationView:
    id: str
    kind: str
    kind_words: str
    title: str
    channel: str
    delivery: str
    citizen_id: int
    rules: Application
    submitted_at: dt.datetime
    certificate_no: str | None
    documents: tuple[DocumentView, ...]
    steps: tuple[StepView, ...]

    @property
    def state(self) -> str:
        return str(self.rules.state)

    @property
    def version(self) -> int:
        return self.rules.version

    @property
    def fully_online(self) -> bool:
        return self.channel == "online" and self.delivery == "electronic"

    @property
    def staff_steps(self) -> tuple[str, ...]:
        return tuple(str(s) for s in self.rules.allowed() if s in rules.STAFF_STEPS)

    @property
    def can_upload(self) -> bool:
        return self.rules.state in (State.SUBMITTED, State.MATERIALS_REQUESTED)


@dataclass(frozen=True, slots=True)
class Notice:
    application_id: str
    title: str
    step: str
    day: dt.date
    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    view: ApplicationView
    replayed: bool


def _rules_of(row: PermitApplication) -> Application:
    def dl(due: dt.date | None, calendar: str | None) -> Deadline | None:
        return None if due is None or calendar is None else Deadline(due, calendar)

    materials = dl(row.materials_due, row.materials_due_calendar)
    assert materials is not None
    return Application(
        state=State(row.state),
        submitted_on=row.submitted_on,
        materials_due=materials,
        materials_requested=row.materials_requested,
        accepted_on=row.accepted_on,
        decision_due=dl(row.decision_due, row.decision_due_calendar),
        extended=row.extended,
        decided_on=row.decided_on,
        certificate_due=dl(row.certificate_due, row.certificate_due_calendar),
        certificate_issued_on=row.certificate_issued_on,
        version=row.version,
    )


def _store(row: PermitApplication, app: Application) -> None:
    """Write the rules' result back; asserted so a stored deadline always has its calendar."""
    row.state = str(app.state)
    row.version = app.version
    row.materials_due, row.materials_due_calendar = app.materials_due.due, app.materials_due.calendar
    row.materials_requested = app.materials_requested
    row.accepted_on = app.accepted_on
    row.decision_due = app.decision_due.due if app.decision_due else None
    row.decision_due_calendar = app.decision_due.calendar if app.decision_due else None
    row.extended = app.extended
    row.decided_on = app.decided_on
    row.certificate_due = app.certificate_due.due if app.certificate_due else None
    row.certificate_due_calendar = app.certificate_due.calendar if app.certificate_due else None
    row.certificate_issued_on = app.certificate_issued_on
    assert (row.decision_due is None) == (row.decision_due_calendar is None)


def certificate_number(application_id: str, on: dt.date) -> str:
    """``XY2026-1A2B3C4D``: the year of issue and the application's first id letters (unique with it)."""
    return f"XY{on:%Y}-{application_id[3:11].upper()}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class PermitService:
    sessions: sessionmaker[Session]
    audit: AuditLog
    today: Callable[[], dt.date] = today_in_shanghai
    clock: Callable[[], dt.datetime] = _utcnow

    # --- reading ------------------------------------------------------------------------------

    def _view(self, session: Session, row: PermitApplication) -> ApplicationView:
        docs = session.scalars(
            select(PermitDocument).where(PermitDocument.application_id == row.id).order_by(PermitDocument.id)
        )
        steps = session.scalars(
            select(PermitStep).where(PermitStep.application_id == row.id).order_by(PermitStep.version)
        )
        return ApplicationView(
            id=row.id,
            kind=row.kind,
            kind_words=KINDS.get(row.kind, row.kind),
            title=row.title,
            channel=row.channel,
            delivery=row.delivery,
            citizen_id=row.citizen_id,
            rules=_rules_of(row),
            submitted_at=row.submitted_at,
            certificate_no=row.certificate_no,
            documents=tuple(DocumentView(d.id, d.filename, d.content_type, d.size_bytes, d.uploaded_at) for d in docs),
            steps=tuple(StepView(s.version, s.step, s.actor, s.at, s.day, s.reason) for s in steps),
        )

    def _own(self, session: Session, citizen_id: int, application_id: str, *, lock: bool = False) -> PermitApplication:
        missing = PermitError(PermitCode.E_PERMIT_NOT_FOUND, "no such permit application among yours")
        if not is_application_id(application_id):
            raise missing
        stmt = select(PermitApplication).where(PermitApplication.id == application_id)
        row = session.scalar(stmt.with_for_update() if lock else stmt)
        if row is None or row.citizen_id != citizen_id:
            raise missing
        return row

    def _any(self, session: Session, application_id: str, *, lock: bool = False) -> PermitApplication:
        if not is_application_id(application_id):
            raise PermitError(PermitCode.E_PERMIT_NOT_FOUND, "no such permit application")
        stmt = select(PermitApplication).where(PermitApplication.id == application_id)
        row = session.scalar(stmt.with_for_update() if lock else stmt)
        if row is None:
            raise PermitError(PermitCode.E_PERMIT_NOT_FOUND, "no such permit application")
        return row

    def exists(self, application_id: str) -> bool:
        with self.sessions() as session:
            return session.get(PermitApplication, application_id) is not None

    def applications_of(self, citizen_id: int) -> list[ApplicationView]:
        with self.sessions() as session:
            rows = session.scalars(
                select(PermitApplication)
                .where(PermitApplication.citizen_id == citizen_id)
                .order_by(PermitApplication.submitted_at.desc(), PermitApplication.id)
                .limit(LIST_MAX)
            )
            return [self._view(session, r) for r in rows]

    def application_of(self, citizen_id: int, application_id: str) -> ApplicationView:
        with self.sessions() as session:
            return self._view(session, self._own(session, citizen_id, application_id))

    def notices_of(self, citizen_id: int, limit: int = 50) -> list[Notice]:
        """The steps that concern the citizen, newest first: their notifications."""
        with self.sessions() as session:
            rows = session.execute(
                select(PermitStep, PermitApplication.title)
                .join(PermitApplication, PermitApplication.id == PermitStep.application_id)
                .where(PermitApplication.citizen_id == citizen_id, PermitStep.step.in_([str(s) for s in NOTICE_STEPS]))
                .order_by(PermitStep.at.desc(), PermitStep.id.desc())
                .limit(limit)
            ).all()
            return [Notice(s.application_id, title, s.step, s.day, s.reason) for s, title in rows]

    def document_of(self, citizen_id: int | None, application_id: str, document_id: int) -> tuple[PermitDocument, str]:
        """A document's row (bytes, sniffed type, name); ``citizen_id`` None: a staff read."""
        with self.sessions() as session:
            if citizen_id is None:
                app = self._any(session, application_id)
            else:
                app = self._own(session, citizen_id, application_id)
            doc = session.get(PermitDocument, document_id)
            if doc is None or doc.application_id != app.id:
                raise PermitError(PermitCode.E_PERMIT_NOT_FOUND, "no such document in this application")
            session.expunge(doc)
            return doc, app.id

    # --- the citizen's steps --------------------------------------------------------------------

    def submit(
        self,
        citizen_id: int,
        application_id: str,
        *,
        kind: str,
        title: str,
        delivery: str,
        documents: list[Upload],
        channel: str = "online",
        actor: str = "citizen",
    ) -> Done:
        """A new application (id from the form); the same id again answers the one already made."""
        assert is_application_id(application_id)
        if kind not in KINDS:
            raise PermitError(PermitCode.E_PERMIT_FORM, "choose one of the permits offered")
        if delivery not in ("electronic", "counter"):
            raise PermitError(PermitCode.E_PERMIT_FORM, "choose how the certificate is delivered")
        text = " ".join(title.split())
        if not 0 < len(text) <= TITLE_CHARS_MAX:
            raise PermitError(
                PermitCode.E_PERMIT_FORM, f"describe the application in 1 to {TITLE_CHARS_MAX} characters"
            )
        checked = [self._check_upload(u) for u in documents]
        if len(checked) > DOCUMENTS_MAX:
            raise PermitError(PermitCode.E_PERMIT_DOCUMENTS_MAX, f"at most {DOCUMENTS_MAX} documents")
        today = self.today()
        with self.sessions() as session, session.begin():
            found = session.get(PermitApplication, application_id)
            if found is not None:
                if found.citizen_id != citizen_id:
                    raise PermitError(PermitCode.E_PERMIT_FORM, "reload the form and send it again")
                return Done(self._view(session, found), replayed=True)
            app = rules.submit(today)
            row = PermitApplication(
                id=application_id, citizen_id=citizen_id, kind=kind, title=text, channel=channel,
                delivery=delivery, submitted_at=self.clock(), submitted_on=today,
            )  # fmt: skip
            _store(row, app)
            session.add(row)
            session.flush()
            session.add(PermitStep(application_id=row.id, version=0, step="submit", actor=actor, at=self.clock(),
                                   day=today, reason=""))  # fmt: skip
            for upload, (content_type, digest) in zip(documents, checked, strict=True):
                self._add_document(session, row.id, upload, content_type, digest)
            session.flush()
            return Done(self._view(session, row), replayed=False)

    def _check_upload(self, upload: Upload) -> tuple[str, str]:
        if not 0 < len(upload.content) <= DOCUMENT_BYTES_MAX:
            raise PermitError(PermitCode.E_PERMIT_DOCUMENT_SIZE, "a document is at most 2 MiB and not empty")
        return sniff(upload.content), hashlib.sha256(upload.content).hexdigest()

    def _add_document(
        self, session: Session, application_id: str, upload: Upload, content_type: str, digest: str
    ) -> None:
        exists = session.scalar(
            select(PermitDocument.id).where(
                PermitDocument.application_id == application_id, PermitDocument.sha256 == digest
            )
        )
        if exists is not None:
            return  # the same bytes again: stored once
        count = session.scalar(
            select(func.count()).select_from(PermitDocument).where(PermitDocument.application_id == application_id)
        )
        if (count or 0) >= DOCUMENTS_MAX:
            raise PermitError(PermitCode.E_PERMIT_DOCUMENTS_MAX, f"at most {DOCUMENTS_MAX} documents")
        session.add(
            PermitDocument(
                application_id=application_id, sha256=digest, content_type=content_type,
                size_bytes=len(upload.content), filename=clean_filename(upload.filename), content=upload.content,
                uploaded_at=self.clock(),
            )
        )  # fmt: skip

    def add_document(self, citizen_id: int, application_id: str, upload: Upload) -> ApplicationView:
        """Another document, while the application is submitted or waiting for materials."""
        content_type, digest = self._check_upload(upload)
        with self.sessions() as session, session.begin():
            row = self._own(session, citizen_id, application_id, lock=True)
            if State(row.state) not in (State.SUBMITTED, State.MATERIALS_REQUESTED):
                raise PermitError(PermitCode.E_PERMIT_STATE, "documents can be added before acceptance only")
            self._add_document(session, row.id, upload, content_type, digest)
            session.flush()
            return self._view(session, row)

    def supplement(self, citizen_id: int, application_id: str, version: int) -> Done:
        """The citizen says the missing materials are uploaded: back to the clerk."""
        with self.sessions() as session, session.begin():
            row = self._own(session, citizen_id, application_id, lock=True)
            return self._step(session, row, Act(Step.SUPPLEMENT, self.today()), version, actor="citizen")

    # --- staff ----------------------------------------------------------------------------------

    def staff_list(self, state: str | None = None) -> list[ApplicationView]:
        with self.sessions() as session:
            stmt = select(PermitApplication).order_by(PermitApplication.submitted_at.desc()).limit(LIST_MAX)
            if state is not None and state in tuple(State):
                stmt = stmt.where(PermitApplication.state == state)
            return [self._view(session, r) for r in session.scalars(stmt)]

    def staff_view(self, actor: str, application_id: str) -> ApplicationView:
        """One application for a clerk; the read is audited (it shows a citizen's record)."""
        with self.sessions() as session, session.begin():
            view = self._view(session, self._any(session, application_id))
            self.audit.record(session, actor=actor, action="permit_view", target=audit_target(view.id))
            return view

    def staff_document(self, actor: str, application_id: str, document_id: int) -> PermitDocument:
        doc, app_id = self.document_of(None, application_id, document_id)
        self.audit.record_now(actor=actor, action="permit_view", target=audit_target(app_id),
                              detail=f"document {doc.id}")  # fmt: skip
        return doc

    def act(self, actor: str, application_id: str, step: str, version: int, reason: str = "") -> Done:
        """A clerk's step; audited with its outcome (a refusal too, in its own transaction)."""
        if step not in tuple(Step) or Step(step) not in rules.STAFF_STEPS:
            raise PermitError(PermitCode.E_PERMIT_FORM, "no such step")
        target = audit_target(application_id) if is_application_id(application_id) else "permit:?"
        try:
            with self.sessions() as session, session.begin():
                row = self._any(session, application_id, lock=True)
                done = self._step(session, row, Act(Step(step), self.today(), reason), version, actor=actor)
                if not done.replayed:
                    detail = f"{step}: {done.view.state}, version {done.view.version}"
                    self.audit.record(session, actor=actor, action="permit_review", target=target, detail=detail)
                return done
        except PermitError as exc:
            self.audit.record_now(actor=actor, action="permit_review", target=target, outcome=exc.code.value,
                                  detail=f"{step} refused")  # fmt: skip
            raise

    def _step(self, session: Session, row: PermitApplication, act: Act, version: int, *, actor: str) -> Done:
        if version != row.version:
            last = session.scalar(
                select(PermitStep).where(PermitStep.application_id == row.id, PermitStep.version == row.version)
            )
            if row.version == version + 1 and last is not None and last.step == str(act.step):
                return Done(self._view(session, row), replayed=True)  # the same form again: nothing written
            raise PermitError(PermitCode.E_PERMIT_STALE, "the application changed since the page was loaded")
        after = rules.apply(_rules_of(row), act)
        reason = rules.check_reason(act.reason) if act.step in rules.REASON_STEPS else ""
        _store(row, after)
        if act.step is Step.ISSUE_CERTIFICATE:
            row.certificate_no = certificate_number(row.id, act.on)
        session.add(PermitStep(application_id=row.id, version=after.version, step=str(act.step), actor=actor,
                               at=self.clock(), day=act.on, reason=reason))  # fmt: skip
        session.flush()
        return Done(self._view(session, row), replayed=False)

    def dashboard(self) -> rules.Dashboard:
        with self.sessions() as session:
            rows = session.scalars(select(PermitApplication).limit(DASHBOARD_ROWS_MAX))
            pairs = [(_rules_of(r), r.channel == "online" and r.delivery == "electronic") for r in rows]
        return rules.dashboard(pairs, self.today())


def with_today(service: PermitService, today: Callable[[], dt.date]) -> PermitService:
    return dataclasses.replace(service, today=today)


__all__ = [
    "DOCUMENTS_MAX",
    "DOCUMENT_BYTES_MAX",
    "KINDS",
    "TODAY_ENV",
    "ApplicationView",
    "DocumentView",
    "Done",
    "Notice",
    "PermitService",
    "StepView",
    "Upload",
    "audit_target",
    "certificate_number",
    "clean_filename",
    "is_application_id",
    "sniff",
    "today_in_shanghai",
    "with_today",
]
