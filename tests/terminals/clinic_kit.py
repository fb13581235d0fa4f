"""Helpers for the clinic tests (no tests here): a clinic, an enrolled social security card, a host.

The card is issued by ``clearing.issuance`` from a real key store (its issuer CA signs the
card's auth certificate, PIN 123456 as in the demo); the clinic terminal's PSAM is personalised
from the same store, so the purse record's TAC verifies at the host. The host is the real
clearing app with the clinic API mounted (``portal.modules.medical.api_clinic``), reached
through ``HttpClinicHost`` over FastAPI's TestClient; the purse record is uploaded as a batch to
the same app and cleared like any tap.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from cardos.card import Card
from cardos.os import TearPlan
from cardos.psam import Psam, psam_image_for_terminal
from clearing import db, registry
from clearing.api import ApiDeps, create_app
from clearing.contract import Batch
from clearing.ingest import TacKeys, keystore_dtk
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import account_balance, trial_balance
from clearing.models import Account, Transfer
from clearing.models import Card as CardRow
from portal.audit import AuditLog
from portal.card_login import keystore_anchors
from portal.modules.medical.api_clinic import mount_clinic_api
from portal.modules.medical.models import MedicalAccumulator, MedicalVisit
from portal.modules.medical.rules import load_example_rules
from portal.modules.medical.visits import VisitService, enrol, register_clinic
from terminals.clinic import Clinic, HttpClinicHost
from terminals.config import TerminalConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import InProcessReader, Reader
from terminals.validator import Terminal

PIN = "123456"
CLINIC_TERMINAL = "360486600077"
CLINIC_OPERATOR = "clinic-weicheng-1"
ISSUER = "01007120ffffffff"


class TearAt:
    """A card whose power is cut at the next command with INS ``ins`` (``0x54``: DEBIT), once.

    The clinic powers the card several times per visit (read, PIN, purchase), so a tear planned by
    APDU index would land in the wrong power session; this arms the card's own ``TearPlan`` at
    the moment the named command arrives. It is the card itself, not a stand-in.
    """

    def __init__(self, card: Card, ins: int = 0x54, phase: str = "after_commit") -> None:
        self.card = card
        self.ins = ins
        self.phase = phase
        self.armed = True

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        if self.armed and len(apdu) > 1 and apdu[1] == self.ins:
            self.armed = False
            self.card.tear = TearPlan(at_apdu=self.card.apdu_index + 1, phase=self.phase)  # type: ignore[arg-type]
        return self.card.transmit(apdu)


class LiveServer:
    """A real uvicorn on a free port, in a thread (for ``terminal run --clinic``, which dials a URL)."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def sign_visit(card: Card, terminal_id: str, visit_ref: str, *, pin: str = PIN) -> tuple[str, str]:
    """(certificate, signature) as the clinic terminal gets them: VERIFY, INTERNAL AUTHENTICATE."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from cardos.apdu import split_response
    from cardos.profile import AID_AUTH
    from terminals.clinic import challenge

    def send(apdu: bytes) -> bytes:
        data, sw = split_response(card.transmit(apdu))
        assert sw == 0x9000, f"{apdu.hex()} -> {sw:04X}"
        return data

    card.power_on()
    try:
        send(bytes([0x00, 0xA4, 0x04, 0x00, len(AID_AUTH)]) + AID_AUTH + b"\x00")
        der = send(bytes.fromhex("00B08100000000"))
        send(bytes.fromhex("0020000106") + pin.encode())
        signature = send(bytes.fromhex("0088000040") + challenge(terminal_id, visit_ref) + b"\x00")
    finally:
        card.power_off()
    r, s_ = decode_dss_signature(signature)
    return base64.b64encode(der).decode(), base64.b64encode(r.to_bytes(32, "big") + s_.to_bytes(32, "big")).decode()


def migrated_template(directory: Path) -> Path:
    path = directory / "template.db"
    db.upgrade(f"sqlite:///{path}")
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return path


def sqlite_copy(template: Path, tmp_path: Path) -> Engine:
    path = tmp_path / "medical.db"
    shutil.copyfile(template, path)
    return db.make_engine(f"sqlite:///{path}")


def new_keystore(directory: Path) -> KeyStore:
    ks = KeyStore.open(directory / "keystore.json", os.urandom(32))
    ks.init(["xianyang"])
    return ks


@dataclass
class ClinicRig:
    engine: Engine
    keystore: KeyStore
    service: VisitService
    client: TestClient
    token: str
    card_asn: str
    card: Card
    psam: Psam
    journal_path: Path
    app: Any

    # --- the terminal ------------------------------------------------------------------------

    def terminal(self, card_reader: Reader, sam_reader: Reader) -> Terminal:
        journal = Journal(self.journal_path)
        return Terminal(
            card_reader=card_reader,
            sam_reader=sam_reader,
            journal=journal,
            denylist=Denylist(self.journal_path),
            config=TerminalConfig(),
        )

    def clinic(self, terminal: Terminal) -> Clinic:
        return Clinic(terminal, HttpClinicHost(self.client, CLINIC_TERMINAL, self.token), clinic_name="Weicheng clinic")

    def in_process_clinic(self) -> tuple[Clinic, InProcessReader]:
        reader = InProcessReader("card")
        return self.clinic(self.terminal(reader, InProcessReader("sam", self.psam))), reader

    # --- the host's books --------------------------------------------------------------------

    def upload(self, journal: Journal) -> Any:
        """The journal's next batch to the clearing API, as the uploader sends it."""
        batch = journal.next_batch()
        assert batch is not None
        answer = self.client.post(
            f"/v1/terminals/{CLINIC_TERMINAL}/batches",
            content=batch.body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        assert answer.status_code == 200, answer.text
        journal.store_answer(batch, answer.content)
        return msgspec.json.decode(answer.content)

    def balances(self) -> dict[str, int]:
        """Fund, clinic payable and card liability (credit balances), after a trial balance."""
        with Session(self.engine) as session:
            trial_balance(session)
            card = session.execute(select(CardRow).where(CardRow.card_asn == self.card_asn)).scalar_one()
            fund = session.execute(select(Account).where(Account.owner_ref == "system:medical_fund")).scalar()
            payable = session.execute(
                select(Account).where(Account.owner_ref == f"operator:{CLINIC_OPERATOR}")
            ).scalar_one()
            return {
                "fund": 0 if fund is None else account_balance(session, fund.id).credit_balance_fen,
                "fund_pending_debit": 0 if fund is None else fund.debits_pending,
                "clinic": account_balance(session, payable.id).credit_balance_fen,
                "card": account_balance(session, card.account_id).credit_balance_fen,
            }

    def transfers(self, prefix: str = "med:") -> list[tuple[str, str, int]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(Transfer.id, Transfer.state, Transfer.amount_fen)
                .where(Transfer.id.like(prefix + "%"))
                .order_by(Transfer.id)
            )
            return [(r[0], r[1], r[2]) for r in rows]

    def accumulator(self) -> list[tuple[int, str, int, int]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    MedicalAccumulator.year,
                    MedicalAccumulator.kind,
                    MedicalAccumulator.deductible_used_fen,
                    MedicalAccumulator.fund_paid_fen,
                ).order_by(MedicalAccumulator.year, MedicalAccumulator.kind)
            )
            return [(r[0], r[1], r[2], r[3]) for r in rows]

    def visits(self) -> list[tuple[str, int, int]]:
        with Session(self.engine) as session:
            rows = session.execute(
                select(MedicalVisit.state, MedicalVisit.fund_fen, MedicalVisit.patient_fen).order_by(MedicalVisit.id)
            )
            return [(r[0], r[1], r[2]) for r in rows]


def make_rig(
    engine: Engine,
    keystore: KeyStore,
    tmp_path: Path,
    *,
    balance_fen: int = 20_000,
    region: str = "qindu",
    level: str = "township",
    now: dt.datetime | None = None,
) -> ClinicRig:
    now = now or dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city="xianyang")
        token = registry.register_terminal(session, CLINIC_TERMINAL, CLINIC_OPERATOR)
        register_clinic(session, CLINIC_TERMINAL, name="Weicheng township clinic", region=region, hospital_level=level)
        image, row = issue_card(
            session, keystore, issuer_id="xianyang", card_type="social_security", pin=PIN, balance_fen=balance_fen,
            now=now - dt.timedelta(days=1),
        )  # fmt: skip
        asn = row.card_asn
        enrol(session, row.issuer_id, asn, region=region, year_from=2025)
    sessions = db.session_factory(engine)
    service = VisitService(
        sessions=sessions,
        rules=load_example_rules(),
        anchors=keystore_anchors(keystore),
        mac_key_for=TacKeys(keystore_dtk(keystore), keystore.issuers()).for_record,
        audit=AuditLog(sessions),
    )
    app = create_app(ApiDeps(engine, keystore))
    mount_clinic_api(app, service)
    rig_app = app
    psam = Psam(psam_image_for_terminal(bytes.fromhex(CLINIC_TERMINAL), bytes(10), keystore.psam_keys([ISSUER])))
    return ClinicRig(engine, keystore, service, TestClient(rig_app), token, asn, Card.from_image(image), psam,
                     tmp_path / "clinic-journal.db", rig_app)  # fmt: skip


__all__ = [
    "CLINIC_TERMINAL",
    "PIN",
    "Batch",
    "ClinicRig",
    "LiveServer",
    "TearAt",
    "make_rig",
    "migrated_template",
    "new_keystore",
    "sign_visit",
    "sqlite_copy",
]
