"""Medical insurance at the clinic (新农合, issue 13): rules, accumulator, visit settlement, reversal, claims.

Public names: the pure rules (``rules``: ``RuleBook``, ``reimburse``, ``Accumulator``,
``load_example_rules``), the visit host (``VisitService``, ``register_clinic``, ``enrol``), the
claims (``ClaimService``), and the wiring used by ``yikatong.app``: ``clinic_service`` (the host
behind the clinic terminal API, built from clearing's engine and key store), ``mount_clinic_api``
and ``mount_medical`` (pages and staff API). ``docs/medical.md`` has the rules and the flows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from portal.modules.medical.api_clinic import mount_clinic_api
from portal.modules.medical.claims_service import ClaimService
from portal.modules.medical.errors import MedicalCode, MedicalError
from portal.modules.medical.rules import Accumulator, Bill, RuleBook, VisitKind, load_example_rules, reimburse
from portal.modules.medical.visits import VisitService, enrol, register_clinic

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from clearing.keystore import KeyStore


def clinic_service(engine: Engine, keystore: KeyStore, *, rules: RuleBook | None = None) -> VisitService:
    """The visit host as the server runs it: card certificates checked against the key store's
    issuer CAs, purse TACs with its keys, reversals audited in the portal's log."""
    from clearing.db import session_factory
    from clearing.ingest import TacKeys, keystore_dtk
    from portal.audit import AuditLog
    from portal.card_login import keystore_anchors

    sessions = session_factory(engine)
    return VisitService(
        sessions=sessions,
        rules=rules or load_example_rules(),
        anchors=keystore_anchors(keystore),
        mac_key_for=TacKeys(keystore_dtk(keystore), keystore.issuers()).for_record,
        audit=AuditLog(sessions),
    )


def mount_medical(*args: object, **kwargs: object) -> object:
    """``portal.modules.medical.pages.mount_medical`` (imported late: the pages need the templates)."""
    from portal.modules.medical.pages import mount_medical as mount

    return mount(*args, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "Accumulator",
    "Bill",
    "ClaimService",
    "MedicalCode",
    "MedicalError",
    "RuleBook",
    "VisitKind",
    "VisitService",
    "clinic_service",
    "enrol",
    "load_example_rules",
    "mount_clinic_api",
    "mount_medical",
    "register_clinic",
    "reimburse",
]
