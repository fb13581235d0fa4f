"""The pain.001 written as text and checked in two parts (settlement/payouts.py): the same bytes
ElementTree writes, and the same verdict as the full xmlschema validation."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_payouts import batch, payee

from settlement.bank import BankAccount
from settlement.errors import SettlementCode, SettlementError
from settlement.payouts import (
    CLEARING_SYSTEM,
    CURRENCY,
    PAIN001_NS,
    PayoutBatch,
    check_pain001,
    format_yuan,
    payout_pain001,
    validate_pain001,
)


def _el(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _account(parent: ET.Element, tag: str, account: BankAccount) -> None:
    acct = _el(parent, tag)
    _el(_el(_el(acct, "Id"), "Othr"), "Id", account.number)
    _el(acct, "Ccy", CURRENCY)
    _el(acct, "Nm", account.name)


def _agent(parent: ET.Element, tag: str, account: BankAccount) -> None:
    member = _el(_el(_el(parent, tag), "FinInstnId"), "ClrSysMmbId")
    _el(_el(member, "ClrSysId"), "Cd", CLEARING_SYSTEM)
    _el(member, "MmbId", account.cnaps)


def tree_pain001(b: PayoutBatch) -> bytes:
    """The oracle: the document built as an ElementTree (how payouts.py wrote it before)."""
    total, count = format_yuan(b.total_fen), str(len(b.lines))
    root = ET.Element("Document", {"xmlns": PAIN001_NS})
    initiation = _el(root, "CstmrCdtTrfInitn")
    header = _el(initiation, "GrpHdr")
    _el(header, "MsgId", b.message_id)
    _el(header, "CreDtTm", b.created_at.isoformat(timespec="seconds"))
    _el(header, "NbOfTxs", count)
    _el(header, "CtrlSum", total)
    _el(_el(header, "InitgPty"), "Nm", b.payer.name)
    info = _el(initiation, "PmtInf")
    for tag, text in (("PmtInfId", f"{b.message_id}-1"), ("PmtMtd", "TRF"), ("BtchBookg", "false"),
                      ("NbOfTxs", count), ("CtrlSum", total)):  # fmt: skip
        _el(info, tag, text)
    _el(_el(info, "ReqdExctnDt"), "Dt", b.execution_date.isoformat())
    _el(_el(info, "Dbtr"), "Nm", b.payer.name)
    _account(info, "DbtrAcct", b.payer.account)
    _agent(info, "DbtrAgt", b.payer.account)
    _el(info, "ChrgBr", "DEBT")
    for line in b.lines:
        tx = _el(info, "CdtTrfTxInf")
        _el(_el(tx, "PmtId"), "EndToEndId", line.end_to_end_id)
        _el(_el(tx, "Amt"), "InstdAmt", format_yuan(line.amount_fen), Ccy=CURRENCY)
        _agent(tx, "CdtrAgt", line.account)
        _el(_el(tx, "Cdtr"), "Nm", line.account.name)
        _account(tx, "CdtrAcct", line.account)
        _el(_el(tx, "RmtInf"), "Ustrd", f"Yikatong settlement {b.business_day.isoformat()} {line.payee_id}")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


payee_ids = st.from_regex(r"[A-Za-z0-9._][A-Za-z0-9 ._-]{0,20}", fullmatch=True).filter(lambda s: s == s.strip())
# names with the characters XML must escape, and CJK
names = st.text(alphabet=st.sampled_from("咸阳公交泡馍店AB&<>\"'·() "), min_size=1, max_size=30).filter(
    lambda s: s == s.strip()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(payee_ids, st.tuples(names, st.integers(1, 10**12)), min_size=1, max_size=6))
def test_the_text_writer_gives_elementtrees_bytes_and_both_checks_agree(nets: dict[str, tuple[str, int]]) -> None:
    b = batch([payee(pid, net, name) for pid, (name, net) in nets.items()])
    document = payout_pain001(b)
    assert document == tree_pain001(b)
    validate_pain001(document)
    check_pain001(b)


def _with_account(b: PayoutBatch, **changes: str) -> PayoutBatch:
    """A batch whose last payout's account was changed behind BankAccount's checks (frozen)."""
    line = b.lines[-1]
    account = line.account
    bad = object.__new__(BankAccount)
    for field in ("name", "number", "cnaps"):
        object.__setattr__(bad, field, changes.get(field, getattr(account, field)))
    return dataclasses.replace(b, lines=(*b.lines[:-1], dataclasses.replace(line, account=bad)))


@pytest.mark.parametrize(
    "changes",
    [{"name": "x" * 71}, {"number": "1" * 35}, {"cnaps": "1" * 36}, {"name": ""}],
    ids=["account name over Max70Text", "number over Max34Text", "bank code over Max35Text", "empty name"],
)
def test_a_value_the_xsd_refuses_is_refused_by_both_checks(changes: dict[str, str]) -> None:
    b = _with_account(batch([payee("op-1", 100), payee("op-2", 200), payee("op-3", 300)]), **changes)
    for check in (lambda: validate_pain001(payout_pain001(b)), lambda: check_pain001(b)):
        with pytest.raises(SettlementError) as caught:
            check()
        assert caught.value.code is SettlementCode.E_PAYOUT_SCHEMA
