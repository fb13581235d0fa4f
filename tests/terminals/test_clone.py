"""A copied card image at the validator: refused, kept as a fraud event, and the next rider served.

A genuine card never signs the same offline counter twice, so a second card presenting a
counter this journal already holds (or one below it) is a copy of a card image. The
validator must never stop for a card: it refuses this one, keeps the evidence, and goes on.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardos.card import Card
from cardos.image import CardImage
from clearing.contract import TapRecord
from terminals.session import Outcome
from tests.terminals.test_tap_kit import ASN_A, ASN_B, NOW, Rig, make_card, make_rig, tap_tac_verifies


def copy_of(card: Card) -> Card:
    """What a cloner makes: the whole image, keys and counters included, in another card."""
    return Card.from_image(CardImage.from_json(card.image.to_json()))


def test_a_clone_tapped_after_the_original_is_refused_and_the_next_rider_pays(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    original = make_card()
    clone = copy_of(original)
    paid = rig.present(original)
    assert paid.outcome is Outcome.PAID
    later = NOW + dt.timedelta(minutes=5)  # past the repeat-tap window
    refused = rig.present(clone, later)
    assert refused.outcome is Outcome.SUSPECTED_CLONE, refused
    assert "suspected clone" in refused.message and "+08:00" in refused.message
    assert refused.amount_fen == 0 and clone.balance_fen == 5_000  # nothing taken from either card
    # The evidence: the record the clone signed (a real TAC, its own terminal sequence), the
    # record already journaled under that card key, and when it was seen.
    [event] = rig.journal.fraud_events()
    assert event.kind == "duplicate_card_counter" and event.detected_at
    assert event.earlier == paid.record
    assert event.record.offline_counter == paid.record.offline_counter
    assert event.record.terminal_seq != paid.record.terminal_seq and tap_tac_verifies(event.record)
    assert rig.journal.pending() == [] and rig.journal.count() == 1
    assert refused.fraud_id == event.id
    # The validator goes on: another rider pays, and so does the original card (its counter moved on).
    other = rig.present(make_card(ASN_B), later + dt.timedelta(seconds=3))
    assert other.outcome is Outcome.PAID and other.amount_fen == 200
    assert rig.present(original, later + dt.timedelta(minutes=5)).outcome is Outcome.PAID
    assert rig.journal.count() == 3
    rig.close()


def test_an_image_rolled_back_below_a_counter_journaled_here_is_refused(tmp_path: Path) -> None:
    elsewhere = make_rig(tmp_path, journal_name="other.db")
    here = make_rig(tmp_path, journal_name="here.db")
    original = make_card()
    old_copy = copy_of(original)  # counter 0
    assert elsewhere.present(original).outcome is Outcome.PAID  # counter 0 used on another validator
    assert here.present(original, NOW + dt.timedelta(minutes=5)).outcome is Outcome.PAID  # counter 1 here
    refused = here.present(old_copy, NOW + dt.timedelta(minutes=10))
    assert refused.outcome is Outcome.SUSPECTED_CLONE and "below counter 1" in refused.message
    [event] = here.journal.fraud_events()
    assert event.kind == "counter_regressed" and event.record.offline_counter == 0
    assert event.earlier.offline_counter == 1 and old_copy.balance_fen == 5_000
    elsewhere.close()
    here.close()


def test_a_duplicate_the_journal_finds_itself_still_does_not_stop_the_validator(tmp_path: Path) -> None:
    """The check before the debit misses it (here: switched off); the journal's key catches it."""
    rig = make_rig(tmp_path)
    rig.terminal.local.counter_clash = lambda *_: None  # type: ignore[method-assign]
    original = make_card()
    clone = copy_of(original)
    assert rig.present(original).outcome is Outcome.PAID
    refused = rig.present(clone, NOW + dt.timedelta(minutes=5))
    assert refused.outcome is Outcome.SUSPECTED_CLONE and "charged 2.00" in refused.message
    assert clone.balance_fen == 4_800  # the clone was debited before the clash was seen
    [event] = rig.journal.fraud_events()
    assert event.kind == "duplicate_card_counter" and event.record.amount_fen == 200
    assert rig.journal.pending() == []
    assert rig.present(make_card(ASN_B), NOW + dt.timedelta(minutes=6)).outcome is Outcome.PAID
    rig.close()


def test_the_clone_record_is_uploaded_after_the_tap_it_duplicates(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    original = make_card()
    clone = copy_of(original)
    rig.present(original)
    rig.present(clone, NOW + dt.timedelta(minutes=5))
    rig.present(make_card(ASN_B), NOW + dt.timedelta(minutes=6))
    assert rig.journal.unanswered_records() == 3
    first = rig.journal.next_batch()
    assert first is not None and first.source == "taps" and first.records == 2
    rig.journal.store_answer(first, _accept_all(first.body))
    second = rig.journal.next_batch()
    assert second is not None and second.source == "fraud_events" and second.batch_seq == first.batch_seq + 1
    [fraud] = rig.journal.fraud_events()
    assert second.terminal_seqs == (fraud.record.terminal_seq,)
    rig.journal.store_answer(second, _accept_all(second.body))
    assert rig.journal.next_batch() is None and rig.journal.unanswered_records() == 0
    rig.close()


def _accept_all(body: bytes) -> bytes:
    from clearing.contract import BatchAnswer, Verdict, decode_batch, encode

    batch = decode_batch(body)
    verdicts = [Verdict(r.terminal_seq, "accepted", "OK", "") for r in batch.records]
    return encode(BatchAnswer(batch.batch_seq, "2025-06-02T09:00:00Z", verdicts))


# A presentation: which physical card (0 = the original; 1.. = copies), and whether a new copy
# of the original's current image is made first (copies are made at any point of its life).
presentation = st.tuples(st.integers(0, 3), st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(presentations=st.lists(presentation, min_size=1, max_size=12))
def test_any_mix_of_a_card_and_its_copies_never_stops_the_validator_and_pays_each_counter_once(
    presentations: list[tuple[int, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # In-process cards answer in microseconds unless the shared machine stalls the test:
        # the deadline is not what this property is about, so it is generous here.
        rig: Rig = make_rig(Path(tmp), repeat_window_s=0, apdu_timeout_ms=10_000, sam_timeout_ms=10_000)
        cards = [make_card(ASN_A)]
        start_fen = [cards[0].balance_fen]
        for n, (which, copy_first) in enumerate(presentations):
            if copy_first:
                cards.append(copy_of(cards[0]))
                start_fen.append(cards[0].balance_fen)
            card = cards[which % len(cards)]
            result = rig.present(card, NOW + dt.timedelta(minutes=2 * n))
            assert result.outcome in (Outcome.PAID, Outcome.SUSPECTED_CLONE), result
            if result.outcome is Outcome.SUSPECTED_CLONE:
                assert result.amount_fen == 0
        records: list[TapRecord] = rig.records()
        keys = [(r.card_asn, r.offline_counter) for r in records]
        assert len(keys) == len(set(keys))  # each counter paid once here
        frauds = rig.journal.fraud_events()
        assert len(records) + len(frauds) == len(presentations)
        # Money: each physical card lost exactly what its paid taps took (refusals take nothing).
        taken = sum(start - c.balance_fen for start, c in zip(start_fen, cards, strict=True))
        assert taken == sum(r.amount_fen for r in records)
        assert rig.journal.pending() == []
        rig.close()


def test_a_clash_with_a_tap_older_than_the_in_memory_window_is_still_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import terminals.journal

    monkeypatch.setattr(terminals.journal, "LAST_PAID_CACHED_TAPS", 1)  # only the newest tap in memory
    rig = make_rig(tmp_path)
    original = make_card()
    clone = copy_of(original)
    assert rig.present(original).outcome is Outcome.PAID
    assert rig.present(make_card(ASN_B), NOW + dt.timedelta(minutes=1)).outcome is Outcome.PAID
    rig.close()
    again = make_rig(tmp_path, psam=rig.psam)  # reopened: the first tap is now older than the window
    assert again.present(clone, NOW + dt.timedelta(minutes=5)).outcome is Outcome.SUSPECTED_CLONE
    assert again.present(make_card(bytes.fromhex("03104000000000000003")), NOW).outcome is Outcome.PAID
    again.close()


def test_a_clone_at_a_till_is_refused_without_paying_the_sale(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    original = make_card()
    clone = copy_of(original)
    assert rig.sell(original, 1_250).outcome is Outcome.PAID
    refused = rig.sell(clone, 1_250, NOW + dt.timedelta(seconds=30))  # a till has no repeat window
    assert refused.outcome is Outcome.SUSPECTED_CLONE and clone.balance_fen == 5_000
    [event] = rig.journal.fraud_events()
    assert (event.record.tx_type, event.record.amount_fen) == (6, 0) and tap_tac_verifies(event.record)
    assert rig.sell(make_card(ASN_B), 990, NOW + dt.timedelta(minutes=1)).outcome is Outcome.PAID
    rig.close()
