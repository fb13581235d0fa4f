"""Payout files: deterministic CSV and pain.001.001.09, valid against the official XSD (settlement/payouts.py)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from settlement.bank import BankAccount
from settlement.errors import SettlementCode, SettlementError
from settlement.fees import AMOUNT_FEN_MAX
from settlement.payouts import (
    CSV_COLUMNS,
    PAIN001_NS,
    PayeeNet,
    Payer,
    PayoutBatch,
    end_to_end_id,
    format_yuan,
    pain001_xsd_path,
    payout_batch,
    payout_csv,
    payout_pain001,
    validate_pain001,
)

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
DAY = dt.date(2026, 12, 2)
CREATED = dt.datetime(2026, 12, 3, 0, 10, tzinfo=SHANGHAI)
# The official schema (ISO 20022 catalogue, Standards Editor build R1.6.15, 2019-02-14) with LF
# line endings; the CRLF original is de038b37… (docs/settlement.md, "Payout files").
PAIN001_XSD_SHA256 = "05440a7e84f695e7dbc6677082f43623cd7393881b76a5e8d648ae21d7d728e3"
PAYER = Payer("咸阳市一卡通有限公司", BankAccount("咸阳市一卡通有限公司", "61050162000800000001", "105791000019"))
NS = {"p": PAIN001_NS}


def payee(payee_id: str, net_fen: int, name: str = "咸阳公交集团") -> PayeeNet:
    return PayeeNet(payee_id, name, BankAccount(f"{name}有限公司", "2604020109024800001", "102795000011"), net_fen)


def batch(payees: list[PayeeNet], **overrides: object) -> PayoutBatch:
    args: dict[str, object] = {
        "business_day": DAY,
        "created_at": CREATED,
        "execution_date": DAY + dt.timedelta(days=1),
        "payer": PAYER,
        "payees": payees,
    }
    args.update(overrides)
    return payout_batch(**args)  # type: ignore[arg-type]


def test_the_schema_is_the_official_one() -> None:
    assert hashlib.sha256(pain001_xsd_path().read_bytes()).hexdigest() == PAIN001_XSD_SHA256


def test_a_batch_validates_against_the_official_xsd() -> None:
    document = payout_pain001(batch([payee("op-2", 123_456), payee("shop.1", 995, "老孙家泡馍")]))
    validate_pain001(document)
    root = ET.fromstring(document)
    assert root.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum", namespaces=NS) == "1244.51"
    assert root.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:CreDtTm", namespaces=NS) == "2026-12-03T00:10:00+08:00"
    amounts = root.findall(".//p:CdtTrfTxInf/p:Amt/p:InstdAmt", NS)
    assert [(a.text, a.get("Ccy")) for a in amounts] == [("1234.56", "CNY"), ("9.95", "CNY")]


def test_validation_refuses_a_document_the_schema_does_not_accept() -> None:
    document = payout_pain001(batch([payee("op-2", 100)]))
    broken = document.replace(b"<PmtMtd>TRF</PmtMtd>", b"<PmtMtd>CASH</PmtMtd>")
    assert broken != document
    with pytest.raises(SettlementError) as caught:
        validate_pain001(broken)
    assert caught.value.code is SettlementCode.E_PAYOUT_SCHEMA


payee_ids = st.from_regex(r"[A-Za-z0-9._][A-Za-z0-9 ._-]{0,20}", fullmatch=True).filter(lambda s: s == s.strip())
names = st.text(alphabet=st.sampled_from("咸阳公交泡馍店孙建国AB·() "), min_size=1, max_size=20).filter(
    lambda s: s == s.strip()
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(payee_ids, st.tuples(names, st.integers(0, 10**12)), min_size=1, max_size=8))
def test_random_batches_validate_and_are_byte_identical_in_any_input_order(
    nets: dict[str, tuple[str, int]],
) -> None:
    payees = [payee(pid, net, name) for pid, (name, net) in nets.items()]
    first = batch(payees)
    again = batch(list(reversed(payees)))
    assert payout_csv(first) == payout_csv(again)
    if not any(net for _, net in nets.values()):
        return
    document = payout_pain001(first)
    assert document == payout_pain001(again)
    validate_pain001(document)


def test_csv_has_stable_columns_sorted_payees_and_exact_amounts() -> None:
    data = payout_csv(batch([payee("b", 5), payee("a", 123_400), payee("z", 0)]))
    assert data.endswith(b"\r\n") and not data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r[2], r[7], r[8]) for r in rows[1:]] == [("a", "123400", "1234.00"), ("b", "5", "0.05")]
    assert rows[1][1] == end_to_end_id(DAY, 1, "a")


def test_ids_derive_from_day_sequence_and_payee_only() -> None:
    e2e = end_to_end_id(DAY, 1, "op-2")
    assert e2e == end_to_end_id(DAY, 1, "op-2") and len(e2e) <= 35
    assert e2e.startswith("YKT2026120201-")
    assert e2e != end_to_end_id(DAY, 2, "op-2") != end_to_end_id(DAY + dt.timedelta(days=1), 1, "op-2")
    assert batch([payee("a", 1)], sequence=3).message_id == "YKT-20261202-03"


@pytest.mark.parametrize(
    ("fen", "text"), [(0, "0.00"), (1, "0.01"), (99, "0.99"), (100, "1.00"), (10**12 + 7, "10000000000.07")]
)
def test_yuan_strings_are_exact(fen: int, text: str) -> None:
    assert format_yuan(fen) == text


def test_negative_nets_are_carried_forward_not_paid() -> None:
    with pytest.raises(SettlementError) as caught:
        batch([payee("a", -1)])
    assert caught.value.code is SettlementCode.E_NEGATIVE_NET


def test_a_payee_twice_is_refused() -> None:
    with pytest.raises(SettlementError) as caught:
        batch([payee("a", 1), payee("a", 2)])
    assert caught.value.code is SettlementCode.E_DUPLICATE_PAYEE


@pytest.mark.parametrize(
    "bad",
    [
        {"created_at": dt.datetime(2026, 12, 3)},
        {"sequence": 0},
        {"sequence": 100},
        {"execution_date": DAY - dt.timedelta(days=1)},
    ],
)
def test_batches_without_an_aware_time_or_a_sane_sequence_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(SettlementError) as caught:
        batch([payee("a", 1)], **bad)
    assert caught.value.code is SettlementCode.E_BAD_PAYOUT_BATCH


@pytest.mark.parametrize("payee_id", ["", "-1+1", " a", "a" * 65, "a/b"])
def test_payee_ids_that_could_break_a_file_are_refused(payee_id: str) -> None:
    with pytest.raises(SettlementError) as caught:
        batch([payee(payee_id, 1)])
    assert caught.value.code is SettlementCode.E_BAD_PAYEE


def test_nothing_to_pay_writes_no_pain001() -> None:
    empty = batch([payee("a", 0)])
    assert payout_csv(empty).count(b"\r\n") == 1
    with pytest.raises(SettlementError) as caught:
        payout_pain001(empty)
    assert caught.value.code is SettlementCode.E_BAD_PAYOUT_BATCH


def test_a_batch_total_above_the_limit_is_refused() -> None:
    with pytest.raises(SettlementError) as caught:
        batch([payee("a", AMOUNT_FEN_MAX), payee("b", 1)])
    assert caught.value.code is SettlementCode.E_BAD_SETTLEMENT_AMOUNT
