"""Every branch of the tap, in process: a real emulated card and PSAM, a real journal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from cardos import crypto
from cardos.os import CardTorn, TearPlan
from cardos.profile import ISSUER_XIAN, CardType
from cardos.records import TRANSIT_BLOCK, TRANSIT_SINGLE
from clearing.contract import DenylistDelta, DenylistEntry
from terminals.session import Cmd, Outcome, Price, find_tlv
from tests.terminals.test_tap_kit import (
    ASN_A,
    ASN_B,
    FARE_FEN,
    NOW,
    Rig,
    ScriptedCard,
    earlier_leg,
    make_card,
    make_psam,
    make_rig,
    tap_tac_verifies,
    transit_history,
)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    made = make_rig(tmp_path)
    yield made
    made.close()


def denylist(rig: Rig, asn: bytes, issuer: str = "01007120ffffffff", effective: dt.datetime = NOW) -> None:
    entry = DenylistEntry(issuer, asn.hex(), "lost", effective.isoformat())
    rig.denylist.apply(DenylistDelta(version=rig.denylist.version + 1, full=False, added=[entry], removed=[]))


def test_normal_tap_debits_the_fare_and_journals_a_record_whose_tac_verifies(rig: Rig) -> None:
    card = make_card()
    result = rig.present(card)
    assert result.outcome is Outcome.PAID and result.message == "paid"
    assert result.amount_fen == FARE_FEN and result.balance_after_fen == 5_000 - FARE_FEN
    assert card.balance_fen == 5_000 - FARE_FEN and card.offline_counter == 1
    [record] = rig.records()
    assert record == result.record
    assert (record.tx_type, record.amount_fen, record.balance_before_fen, record.offline_counter) == (9, 200, 5000, 0)
    assert (record.terminal_id, record.terminal_seq, record.status) == ("360486600002", 1, "normal")
    assert (record.route_id, record.stop_id, record.tx_time) == ("R12", "S7", "2025-06-02T08:00:00+08:00")
    assert record.fare is not None and record.fare.rider_category_id == "ordinary"
    assert tap_tac_verifies(record)
    [leg] = transit_history(card)  # the 48-byte record we cached was committed by DEBIT
    assert (leg.tx_type, leg.line, leg.station, leg.operator) == (TRANSIT_SINGLE, 12, 7, 3)
    assert (leg.amount_fen, leg.balance_after_fen, leg.moment) == (FARE_FEN, 4_800, NOW)
    assert rig.journal.pending() == []


def test_tap_sequence_of_the_psam_increases_and_each_tap_verifies(rig: Rig) -> None:
    cards = [make_card(ASN_A), make_card(ASN_B)]
    results = [rig.present(card, NOW + dt.timedelta(minutes=i)) for i in range(4) for card in cards]
    assert all(r.outcome is Outcome.PAID for r in results)
    records = rig.records()
    assert [r.terminal_seq for r in records] == list(range(1, 9))
    assert all(tap_tac_verifies(r) for r in records)
    assert [c.balance_fen for c in cards] == [5_000 - 4 * FARE_FEN] * 2


def test_repeat_tap_within_the_window_is_not_charged_and_says_already_paid(rig: Rig) -> None:
    card = make_card()
    assert rig.present(card).outcome is Outcome.PAID
    again = rig.present(card, NOW + dt.timedelta(seconds=59))
    assert again.outcome is Outcome.ALREADY_PAID and again.message == "already paid"
    assert again.balance_after_fen == 4_800
    assert card.balance_fen == 4_800 and len(rig.records()) == 1
    later = rig.present(card, NOW + dt.timedelta(seconds=60))
    assert later.outcome is Outcome.PAID and card.balance_fen == 4_600


def test_repeat_window_is_configurable(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, repeat_window_s=5)
    card = make_card()
    assert rig.present(card).outcome is Outcome.PAID
    assert rig.present(card, NOW + dt.timedelta(seconds=4)).outcome is Outcome.ALREADY_PAID
    assert rig.present(card, NOW + dt.timedelta(seconds=5)).outcome is Outcome.PAID
    rig.close()


def test_denylisted_card_gets_a_zero_blocked_record_and_its_application_blocked(rig: Rig) -> None:
    card = make_card()
    denylist(rig, ASN_A)
    result = rig.present(card)
    assert result.outcome is Outcome.BLOCKED and result.message == "card blocked"
    assert card.blocked and card.balance_fen == 5_000
    [record] = rig.records()
    assert (record.status, record.amount_fen, record.tx_type) == ("blocked", 0, 9)
    assert tap_tac_verifies(record)
    assert transit_history(card)[0].tx_type == TRANSIT_BLOCK
    again = rig.present(card, NOW + dt.timedelta(minutes=5))  # SELECT now answers 6283
    assert again.outcome is Outcome.BLOCKED and len(rig.records()) == 1


def test_denylist_entry_not_yet_effective_does_not_block(rig: Rig) -> None:
    card = make_card()
    denylist(rig, ASN_A, effective=NOW + dt.timedelta(hours=1))
    assert rig.present(card).outcome is Outcome.PAID and not card.blocked


@pytest.mark.parametrize(
    ("changes", "outcome"),
    [
        ({"expiry_date": dt.date(2025, 6, 1)}, Outcome.EXPIRED),
        ({"start_date": dt.date(2025, 6, 3)}, Outcome.NOT_YET_VALID),
        ({"app_version": 0xFF}, Outcome.INVALID),
    ],
)
def test_card_outside_its_validity_is_refused_without_touching_the_purse(
    rig: Rig, changes: dict[str, object], outcome: Outcome
) -> None:
    card = make_card(**changes)
    rig.terminal.trace = []
    result = rig.present(card)
    assert result.outcome is outcome
    assert card.balance_fen == 5_000 and card.offline_counter == 0 and rig.records() == []
    assert not any("INITIALIZE" in step for step in rig.terminal.trace)


def test_card_on_its_expiry_day_is_still_accepted(rig: Rig) -> None:
    assert rig.present(make_card(expiry_date=NOW.date())).outcome is Outcome.PAID


def test_xian_card_is_accepted_and_marked_for_interop(rig: Rig) -> None:
    card = make_card(issuer=ISSUER_XIAN)
    result = rig.present(card)
    assert result.outcome is Outcome.PAID and result.interop
    [tap] = list(rig.journal.iter_taps())
    assert tap.interop and tap.record.issuer_id == ISSUER_XIAN.hex()
    assert tap_tac_verifies(tap.record)
    assert card.balance_fen == 4_800


def test_other_issuers_card_without_the_interop_flag_is_refused(rig: Rig) -> None:
    result = rig.present(make_card(issuer=ISSUER_XIAN, interoperable=False))
    assert result.outcome is Outcome.NOT_ACCEPTED and rig.records() == []


def test_unknown_issuer_is_refused(rig: Rig) -> None:
    result = rig.present(make_card(issuer=bytes.fromhex("09990000FFFFFFFF")))
    assert result.outcome is Outcome.NOT_ACCEPTED and rig.records() == []


def test_insufficient_balance_is_refused_and_nothing_is_journaled(rig: Rig) -> None:
    card = make_card(balance_fen=FARE_FEN - 1)
    result = rig.present(card)
    assert result.outcome is Outcome.INSUFFICIENT and result.message == "insufficient balance"
    assert card.balance_fen == FARE_FEN - 1 and rig.records() == [] and rig.journal.pending() == []


def test_torn_debit_that_committed_is_recovered_by_prove_and_not_charged_again(rig: Rig) -> None:
    card = make_card()
    card.tear = TearPlan(at_apdu=6, phase="after_commit")  # SELECT, 17, 1E/1, INIT, CACHE, [DEBIT]
    first = rig.present(card)
    assert first.outcome is Outcome.TAP_AGAIN
    assert card.balance_fen == 4_800 and rig.records() == []
    [pending] = rig.journal.pending()
    assert pending.record.offline_counter == 0 and pending.record.amount_fen == FARE_FEN
    second = rig.present(card, NOW + dt.timedelta(seconds=3))
    assert second.outcome is Outcome.RECOVERED and "not charged again" in second.message
    assert card.balance_fen == 4_800 and card.offline_counter == 1
    [record] = rig.records()
    assert record.status == "recovered" and tap_tac_verifies(record)
    assert record.tx_time == NOW.isoformat()  # the time the card signed, not the retry's
    assert rig.journal.pending() == []
    [tap] = list(rig.journal.iter_taps())
    assert tap.mac2_ok  # the PSAM still had that purchase's session
    assert rig.present(card, NOW + dt.timedelta(seconds=6)).outcome is Outcome.ALREADY_PAID


def test_torn_debit_that_did_not_commit_is_charged_once_on_the_next_tap(rig: Rig) -> None:
    card = make_card()
    card.tear = TearPlan(at_apdu=6, phase="before_commit")
    assert rig.present(card).outcome is Outcome.TAP_AGAIN
    assert card.balance_fen == 5_000 and len(rig.journal.pending()) == 1
    second = rig.present(card, NOW + dt.timedelta(seconds=3))
    assert second.outcome is Outcome.PAID
    assert card.balance_fen == 4_800 and card.offline_counter == 1
    [record] = rig.records()
    assert record.status == "normal" and record.offline_counter == 0 and record.terminal_seq == 2
    assert rig.journal.pending() == []
    [(outcome, closed)] = rig.journal.resolved_pending()
    assert outcome == "not_debited" and closed.terminal_seq == 1


def test_recovery_after_other_taps_still_journals_with_mac2_unverified(rig: Rig) -> None:
    card, other = make_card(ASN_A), make_card(ASN_B)
    card.tear = TearPlan(at_apdu=6, phase="after_commit")
    assert rig.present(card).outcome is Outcome.TAP_AGAIN
    assert rig.present(other).outcome is Outcome.PAID  # the PSAM session is now the other card's
    result = rig.present(card, NOW + dt.timedelta(seconds=10))
    assert result.outcome is Outcome.RECOVERED and "MAC2 not verified" in result.message
    recovered = next(t for t in rig.journal.iter_taps() if t.record.card_asn == ASN_A.hex())
    assert not recovered.mac2_ok and tap_tac_verifies(recovered.record)
    assert card.balance_fen == 4_800


def test_pending_left_by_a_counter_that_moved_elsewhere_is_closed_as_unproven(rig: Rig) -> None:
    card = make_card()
    card.tear = TearPlan(at_apdu=6, phase="before_commit")
    assert rig.present(card).outcome is Outcome.TAP_AGAIN
    other_psam = make_psam(terminal_id=bytes.fromhex("360486600077"))
    other_validator = make_rig(rig.path.parent, psam=other_psam, journal_name="other.db", fare_fen=100)
    assert other_validator.present(card).outcome is Outcome.PAID  # counter 0 -> 1 elsewhere
    other_validator.close()
    result = rig.present(card, NOW + dt.timedelta(minutes=2))
    assert result.outcome is Outcome.PAID
    # GET TRANSACTION PROVE finds the other validator's purchase with our counter; the log
    # shows it is not ours, so the torn debit never happened and this tap pays.
    assert [o for o, _ in rig.journal.resolved_pending()] == ["not_debited"]
    assert card.balance_fen == 5_000 - 100 - FARE_FEN
    [record] = rig.records()
    assert record.status == "normal" and record.offline_counter == 1 and tap_tac_verifies(record)


def test_pending_whose_counter_moved_and_cannot_be_proved_is_closed_as_unproven(rig: Rig) -> None:
    card = make_card()
    card.tear = TearPlan(at_apdu=6, phase="before_commit")
    assert rig.present(card).outcome is Outcome.TAP_AGAIN
    other_psam = make_psam(terminal_id=bytes.fromhex("360486600077"))
    other_validator = make_rig(rig.path.parent, psam=other_psam, journal_name="other.db", fare_fen=100)
    for i in range(9):  # more purchases than the card can still prove
        assert other_validator.present(card, NOW + dt.timedelta(minutes=i)).outcome is Outcome.PAID
    other_validator.close()
    assert rig.present(card, NOW + dt.timedelta(minutes=20)).outcome is Outcome.PAID
    assert [o for o, _ in rig.journal.resolved_pending()] == ["unproven"]
    assert card.balance_fen == 5_000 - 900 - FARE_FEN


def test_mac2_failure_is_journaled_and_reported_as_suspect(tmp_path: Path) -> None:
    def refuse_mac2(apdu: bytes, answer: bytes) -> bytes:
        return bytes.fromhex("9302") if apdu[:2] == b"\x80\x72" else answer

    rig = make_rig(tmp_path, psam=ScriptedCard(make_psam(), refuse_mac2))
    card = make_card()
    result = rig.present(card)
    assert result.outcome is Outcome.SUSPECT and result.outcome.charged
    [tap] = list(rig.journal.iter_taps())
    assert not tap.mac2_ok and tap.record.status == "normal" and tap_tac_verifies(tap.record)
    assert card.balance_fen == 4_800
    rig.close()


def test_mac1_refused_by_the_card_charges_nothing_and_closes_the_pending(tmp_path: Path) -> None:
    def corrupt_mac1(apdu: bytes, answer: bytes) -> bytes:
        if apdu[:2] == b"\x80\x70" and answer[-2:] == b"\x90\x00":
            return answer[:4] + bytes(4) + answer[-2:]
        return answer

    rig = make_rig(tmp_path, psam=ScriptedCard(make_psam(), corrupt_mac1))
    card = make_card()
    result = rig.present(card)
    assert result.outcome is Outcome.CARD_ERROR and "9302" in result.message
    assert card.balance_fen == 5_000 and rig.records() == [] and rig.journal.pending() == []
    assert [o for o, _ in rig.journal.resolved_pending()] == ["refused_9302"]
    rig.close()


def test_pos_sale_is_a_plain_purchase_of_the_amount_entered(rig: Rig) -> None:
    card = make_card()
    rig.terminal.trace = []
    result = rig.sell(card, 1_234)
    assert result.outcome is Outcome.PAID and result.balance_after_fen == 5_000 - 1_234
    [record] = rig.records()
    assert (record.tx_type, record.amount_fen, record.fare, record.route_id) == (6, 1_234, None, None)
    assert tap_tac_verifies(record)
    assert (
        "card:INITIALIZE FOR PURCHASE" in rig.terminal.trace and "card:UPDATE CAPP DATA CACHE" not in rig.terminal.trace
    )
    assert transit_history(card) == []
    second = rig.sell(card, 100)  # no repeat-tap rule at a till
    assert second.outcome is Outcome.PAID and card.balance_fen == 5_000 - 1_334


def test_pos_torn_sale_is_recovered_not_charged_twice(rig: Rig) -> None:
    card = make_card()
    card.tear = TearPlan(at_apdu=4, phase="after_commit")  # SELECT, 17, INIT, [DEBIT]
    assert rig.sell(card, 500).outcome is Outcome.TAP_AGAIN
    again = rig.sell(card, 500)
    assert again.outcome is Outcome.RECOVERED and card.balance_fen == 4_500
    assert [r.status for r in rig.records()] == ["recovered"]


def test_pos_sale_above_the_balance_is_refused(rig: Rig) -> None:
    card = make_card(balance_fen=100)
    assert rig.sell(card, 101).outcome is Outcome.INSUFFICIENT and card.balance_fen == 100


def test_history_is_read_back_to_the_start_of_the_day_or_the_lookback_not_further(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, history_lookback_s=3600)
    card = make_card()
    ages = (dt.timedelta(days=1, hours=1), dt.timedelta(days=1), dt.timedelta(hours=5), dt.timedelta(minutes=50))
    for age in ages:  # oldest first: the card keeps the newest as record 1
        card.transit.push(earlier_leg(NOW - age))
    seen: list[int] = []

    def pricer(*, card_type, history, moment, config):  # type: ignore[no-untyped-def]
        seen.append(len(history))
        return Price(100, None)

    rig.terminal.pricer = pricer
    rig.terminal.trace = []
    assert rig.present(card).outcome is Outcome.PAID
    reads = [s for s in rig.terminal.trace if "READ RECORD" in s]
    assert reads == [f"card:READ RECORD 1E/{n}" for n in (1, 2, 3)]  # 07:10, 03:00 (today), yesterday: stop
    assert seen == [2]
    rig.close()


def test_pricer_sees_the_rider_category_and_the_recent_legs(tmp_path: Path) -> None:
    seen: list[tuple[CardType, int]] = []

    class Recording:
        def __call__(self, *, card_type, history, moment, config):  # type: ignore[no-untyped-def]
            seen.append((card_type, len(history)))
            return Price(0 if history else 150, None)

    rig = make_rig(tmp_path)
    rig.terminal.pricer = Recording()
    card = make_card(card_type=CardType.SENIOR)
    card.transit.push(earlier_leg(NOW - dt.timedelta(minutes=20)))
    result = rig.present(card)
    assert result.outcome is Outcome.PAID and result.amount_fen == 0  # a free transfer still writes a record
    assert seen == [(CardType.SENIOR, 1)]
    assert len(transit_history(card)) == 2 and rig.records()[0].amount_fen == 0
    rig.close()


def test_file_15_is_read_when_the_fci_does_not_carry_it(rig: Rig) -> None:
    def plain_fci(apdu: bytes, answer: bytes) -> bytes:
        if apdu[:4] == bytes.fromhex("00A40400"):
            return bytes.fromhex("6F0A8408A000000632010105") + answer[-2:]
        return answer

    rig.terminal.trace = []
    assert rig.present(ScriptedCard(make_card(), plain_fci)).outcome is Outcome.PAID
    card_steps = [step for step in rig.terminal.trace if step.startswith("card:")]
    assert card_steps[:3] == ["card:SELECT purse", "card:READ BINARY 15", "card:READ BINARY 17"]


def test_not_a_purse_card_is_refused(rig: Rig) -> None:
    def no_app(apdu: bytes, answer: bytes) -> bytes:
        return bytes.fromhex("6A82") if apdu[:4] == bytes.fromhex("00A40400") else answer

    assert rig.present(ScriptedCard(make_card(), no_app)).outcome is Outcome.INVALID


def test_psam_lost_before_the_debit_is_reopened_and_the_tap_run_again(rig: Rig) -> None:
    card = make_card()
    rig.terminal.trace = []
    rig.psam.tear = TearPlan(at_apdu=5, phase="before_commit")  # 4 APDUs to open it, then INIT SAM
    result = rig.present(card)
    assert result.outcome is Outcome.PAID and card.balance_fen == 4_800
    assert rig.terminal.trace.count("sam:PSAM SELECT 8011") == 2  # opened, lost, reopened
    assert len(rig.records()) == 1


def test_psam_gone_mid_tap_is_a_reader_error_and_reopened_when_back(rig: Rig) -> None:
    card = make_card()
    gone = False

    def pull_psam(apdu: bytes, answer: bytes) -> bytes:
        nonlocal gone
        gone = gone or apdu[:2] == bytes.fromhex("8070")  # it leaves for good during INIT SAM
        if gone:
            raise CardTorn("PSAM pulled")
        return answer

    rig.sam_reader.insert(ScriptedCard(rig.psam, pull_psam))
    result = rig.present(card)
    assert result.outcome is Outcome.READER_ERROR and card.balance_fen == 5_000
    assert rig.terminal.sam_info is None and rig.records() == []
    rig.sam_reader.insert(rig.psam)
    assert rig.present(card, NOW + dt.timedelta(seconds=1)).outcome is Outcome.PAID


def test_a_psam_that_left_and_came_back_between_taps_is_reopened_before_the_next(rig: Rig) -> None:
    assert rig.present(make_card()).outcome is Outcome.PAID
    rig.sam_reader.remove()
    rig.sam_reader.insert(rig.psam)  # e.g. its emulator restarted: the old session is gone
    rig.terminal.trace = []
    result = rig.present(make_card(ASN_B), NOW + dt.timedelta(minutes=1))
    assert result.outcome is Outcome.PAID
    assert rig.terminal.trace[0] == "sam:PSAM SELECT 8011"  # reopened first, not after a failed tap


def test_sm4_card_pays_with_an_sm4_psam(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, psam=make_psam({bytes.fromhex("01007120FFFFFFFF"): crypto.ALG_SM4}))
    card = make_card(alg=crypto.ALG_SM4)
    result = rig.present(card)
    assert result.outcome is Outcome.PAID and tap_tac_verifies(result.record)
    rig.close()


def test_find_tlv_reads_9f0c_inside_the_fci_and_survives_garbage() -> None:
    public = bytes(range(30))
    fci = bytes.fromhex("6F2B8408A000000632010105A51F9F080102") + b"\x9f\x0c\x1e" + public[:28]
    assert find_tlv(fci, 0x9F0C) is None  # truncated: no answer rather than a wrong one
    fci = bytes.fromhex("6F318408A000000632010105A5259F0801029F0C1E") + public
    assert find_tlv(fci, 0x9F0C) == public
    assert find_tlv(b"\x6f\x81", 0x9F0C) is None


def test_prepared_commands_match_the_spec_bytes() -> None:
    assert Cmd.select_purse().command.hex().upper() == "00A4040008A00000063201010500"
    assert Cmd.read_binary(0x17, 60).command.hex().upper() == "00B097003C"
    assert Cmd.read_record(0x1E, 3, 48).command.hex().upper() == "00B203F430"
    init = Cmd.initialize_purchase(True, 1, 200, bytes.fromhex("360486600002")).command
    assert init.hex().upper() == "805003020B01000000C83604866000020F"
    assert Cmd.get_transaction_prove(9, 5).command.hex().upper() == "805A0009020005" + "08"
    assert Cmd.credit_sam_for_purchase(b"\x01\x02\x03\x04").command.hex().upper() == "807200000401020304"
    mac = Cmd.cipher_data_mac(bytes(8), bytes.fromhex("841E000004")).command
    assert mac.hex().upper() == "80FA050010" + "00" * 8 + "841E000004800000"
