"""A cloned card, from the validator to the real clearing app (in process, SQLite).

The validator refuses a copy of a card image tapped after the original, keeps the copy's
record (signed by the copy, with its own terminal sequence) as a fraud event and uploads it
as an ordinary record. Clearing refuses it as a duplicate card counter and queues it; money
moves once. A copy tapped on another validator (which cannot know) is charged there; clearing
refuses that record too, and still money moves once.
"""

# ruff: noqa: F811 - ``world`` is test_terminal_upload's fixture (clearing app, key store, terminal,
# uploader), imported so that pytest finds it here: the parameters of that name are that fixture.

from __future__ import annotations

from pathlib import Path
from typing import cast

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cardos.card import Card
from cardos.image import CardImage
from cardos.psam import Psam, psam_image_for_terminal
from clearing import registry
from clearing.models import Card as CardRow
from clearing.models import ExceptionItem, Transfer
from terminals.config import TerminalConfig, UploadConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import InProcessReader
from terminals.session import Outcome
from terminals.uploader import Uploader
from terminals.validator import FlatFare, Terminal
from tests.e2e.test_terminal_upload import OWN, TERMINAL, World, issued, now, world  # noqa: F401

OTHER_TERMINAL = "360486600043"


def session_of(world: World) -> Session:
    return Session(cast(Engine, world.engine))


def copy_of(card: Card) -> Card:
    return Card.from_image(CardImage.from_json(card.image.to_json()))


def asn_of(card: Card) -> str:
    return card.image.public[10:20].hex()


def money_moved_fen(world: World, card: Card) -> int:
    """What purchases took out of the card's liability account (issuance put the rest in)."""
    with session_of(world) as session:
        row = session.scalars(select(CardRow).where(CardRow.card_asn == asn_of(card))).one()
        transfers = session.scalars(
            select(Transfer).where(Transfer.debit_account_id == row.account_id, Transfer.id.like("tap:%"))
        ).all()
        return sum(t.amount_fen for t in transfers)


def shadow_fen(world: World, card: Card) -> int:
    with session_of(world) as session:
        return int(session.scalars(select(CardRow).where(CardRow.card_asn == asn_of(card))).one().shadow_balance_fen)


def queued(world: World, terminal_id: str, terminal_seq: int) -> list[ExceptionItem]:
    with session_of(world) as session:
        return list(
            session.scalars(
                select(ExceptionItem).where(
                    ExceptionItem.terminal_id == terminal_id, ExceptionItem.terminal_seq == terminal_seq
                )
            ).all()
        )


def test_a_clone_refused_at_the_validator_is_refused_by_clearing_as_a_duplicate(world: World) -> None:
    original = issued(world)
    clone = copy_of(original)
    world.reader.insert(original)
    paid = world.terminal.tap(now(0))
    world.reader.insert(clone)
    refused = world.terminal.tap(now(5))
    assert paid.outcome is Outcome.PAID and refused.outcome is Outcome.SUSPECTED_CLONE
    assert paid.record is not None
    [fraud] = world.terminal.journal.fraud_events()

    report = world.uploader.upload_pending()
    assert (report.batches, report.records) == (2, 2)  # the tap first, then the fraud record
    verdicts = world.terminal.journal.verdicts()
    assert verdicts[(TERMINAL, paid.record.terminal_seq)] == ("accepted", "OK")
    assert verdicts[(TERMINAL, fraud.record.terminal_seq)] == ("rejected", "E_DUPLICATE_CARD_COUNTER")
    [item] = queued(world, TERMINAL, fraud.record.terminal_seq)
    assert item.code == "E_DUPLICATE_CARD_COUNTER" and item.state == "open"
    assert money_moved_fen(world, original) == 200 and shadow_fen(world, original) == 4_800
    assert world.terminal.journal.unanswered_records() == 0


def test_a_clone_charged_on_another_validator_moves_no_money_at_clearing(world: World, tmp_path: Path) -> None:
    with session_of(world) as session, session.begin():
        token = registry.register_terminal(session, OTHER_TERMINAL, "bus-2", route="K26")
    held = world.keystore.psam_keys([OWN])
    psam = Psam(psam_image_for_terminal(bytes.fromhex(OTHER_TERMINAL), bytes(9) + b"\x43", held))
    path = tmp_path / "other.db"
    other_reader = InProcessReader("card-2")
    other = Terminal(
        card_reader=other_reader,
        sam_reader=InProcessReader("sam-2", psam),
        journal=Journal(path),
        denylist=Denylist(path),
        config=TerminalConfig(route_id="K26", stop_id="u_city_hall", line_code=1026, station_code=103),
        pricer=FlatFare(200),
    )
    other_uploader = Uploader(
        other.journal, UploadConfig(clearing_url="http://testserver", token=token), client=world.client
    )
    original = issued(world)
    clone = copy_of(original)
    world.reader.insert(original)
    assert world.terminal.tap(now(0)).outcome is Outcome.PAID
    other_reader.insert(clone)
    charged = other.tap(now(5))  # this validator has never seen the card: it cannot know
    assert charged.outcome is Outcome.PAID and clone.balance_fen == 4_800
    assert charged.record is not None

    world.uploader.upload_pending()
    other_uploader.upload_pending()
    [(verdict, code)] = other.journal.verdicts().values()
    assert (verdict, code) == ("rejected", "E_DUPLICATE_CARD_COUNTER")
    assert queued(world, OTHER_TERMINAL, charged.record.terminal_seq)
    assert money_moved_fen(world, original) == 200 and shadow_fen(world, original) == 4_800
    other.journal.close()
    other.denylist.close()
