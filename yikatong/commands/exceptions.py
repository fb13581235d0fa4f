"""``yikatong exceptions``: the queue of rejected and suspect records, and their decisions.

Every listing shows, per item, its age in business days, its amount, what the ledger already
holds for it and what each decision would do; ``accept`` and ``write-off`` say it again and
ask before they do it (``--yes`` skips the question). ``docs/clearing.md`` has the table.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import textwrap
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.text import Text

from clearing.business_day import BusinessDayClock
from clearing.contract.codes import RECORD_CODES, Code
from yikatong.commands.init import cli_errors, fail, open_database, out
from yikatong.commands.local_time import shanghai, shanghai_iso

if TYPE_CHECKING:
    from clearing.exceptions_queue import ItemView

app = typer.Typer(help="The exception queue: rejected and suspect records awaiting a decision.", no_args_is_help=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _decider() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _days() -> object:
    from clearing.business_day import clock_from_settings
    from yikatong.settings import get_settings

    return clock_from_settings(get_settings())


def _sweep(gap_age_days: int | None) -> tuple[int, int]:
    """Queue the gaps still open after their age, resolve queued gaps that filled (one transaction)."""
    from clearing.exceptions_queue import sweep_gaps
    from yikatong.settings import get_settings

    days = _days()
    assert isinstance(days, BusinessDayClock)
    age = get_settings().gap_age_days if gap_age_days is None else gap_age_days
    factory = open_database()
    with factory() as session, session.begin():
        done = sweep_gaps(session, now=_now(), age_days=age, days=days)
    return done.queued, done.resolved


GapAge = Annotated[
    int | None,
    typer.Option(
        "--gap-age-days",
        min=0,
        help="Queue counter gaps open this many business days (default: the setting, 3).",
    ),
]


@app.command("sweep")
def sweep_command(gap_age_days: GapAge = None) -> None:
    """Queue the counter gaps still open after their age; resolve queued gaps whose counters arrived."""
    with cli_errors():
        queued, resolved = _sweep(gap_age_days)
    out.print(f"gaps: {queued} queued, {resolved} resolved")


# The codes an exception item carries: every record verdict but the two that queue nothing.
ITEM_CODES: Final = tuple(
    sorted(c.value for c in RECORD_CODES if c not in (Code.OK, Code.I_FORWARDED_INTEROP))
)  # fmt: skip
_ASN_RE: Final = re.compile(r"[0-9a-f]{20}")
INDENT: Final = 4


def _item_code(text: str) -> str:
    """``--code``: one of the codes an item can carry, in any case; a usage error names them all."""
    code = text.strip().upper()
    if code not in ITEM_CODES:
        raise typer.BadParameter(f"{text!r} is not an exception code; one of {', '.join(ITEM_CODES)}")
    return code


def _created_before(age_days: int, now: dt.datetime, days: BusinessDayClock) -> dt.datetime:
    """The end of the business day ``age_days`` days before today's: an item created before it is
    at least ``age_days`` business days old, the age the listing shows (0: every item until now)."""
    return days.end_of(days.day_of(now) - dt.timedelta(days=age_days))


def _as_json(v: ItemView) -> dict[str, object]:
    """One item for scripts: stable keys, integer fen, ISO 8601 times at +08:00."""
    i = v.item
    return {
        "id": i.id,
        "code": i.code,
        "kind": v.kind.value,
        "state": i.state,
        "age_days": v.age_days,
        "amount_fen": v.amount_fen,
        "issuer_id": i.issuer_id,
        "card_asn": i.card_asn,
        "terminal_id": i.terminal_id,
        "terminal_seq": i.terminal_seq,
        "batch_seq": i.batch_seq,
        "offline_counter": i.offline_counter,
        "message": i.message,
        "moved": v.moved,
        "accept": {"allowed": v.accept.allowed, "moves_fen": v.accept.moves_fen, "sentence": v.accept.sentence},
        "write_off": {
            "allowed": v.write_off.allowed,
            "moves_fen": v.write_off.moves_fen,
            "sentence": v.write_off.sentence,
        },
        "created_at": shanghai_iso(i.created_at),
        "decided_at": shanghai_iso(i.decided_at),
        "decided_by": i.decided_by,
        "note": i.note,
        "decision_transfer_id": i.decision_transfer_id,
        "decision_amount_fen": i.decision_amount_fen,
    }


def _wrapped(text: str, width: int, indent: int = INDENT) -> list[str]:
    """A detail line wrapped inside its indent, continuation lines indented further (a word longer
    than the line is split, never cut)."""
    pad = " " * indent
    return textwrap.wrap(
        " ".join(text.split()), width=max(width, indent + 20), initial_indent=pad, subsequent_indent=pad + "  ",
        break_long_words=True, break_on_hyphens=False,
    ) or [pad]  # fmt: skip


def _print_item(v: ItemView, width: int) -> None:
    """One item as a few short lines: the id, code, amount and age come first, on one line, so
    they are never what wraps away at 80 columns; every line fits ``width``."""
    i = v.item
    head = Text(overflow="fold")
    head.append(f"#{i.id}", style="bold")
    head.append("  ")
    head.append(i.code, style="bold")
    head.append(f"  {v.amount_fen} fen  age {v.age_days} d  {v.kind.value}")
    if i.state != "open":
        head.append(f"  {i.state}")
    out.print(head, soft_wrap=False, highlight=False)
    where = f"card {i.card_asn or '-'} · terminal {i.terminal_id or '-'}"
    if i.terminal_seq is not None:
        where += f" seq {i.terminal_seq}"
    if i.offline_counter is not None:
        where += f" · counter {i.offline_counter}"
    details = [
        (where, ""),
        (f"queued {shanghai(i.created_at)}", ""),
        (f"message: {i.message or '-'}", ""),
        (f"moved: {v.moved}", ""),
        (f"accept: {v.accept.sentence}", "" if v.accept.allowed else "red"),
        (f"write-off: {v.write_off.sentence}", ""),
    ]
    if i.state != "open":
        decided = f"decided by {i.decided_by} at {shanghai(i.decided_at)}: {i.note or ''}"
        details.append((f"{decided} ({i.decision_transfer_id or 'no transfer'})", ""))
    for text, style in details:
        for line in _wrapped(text, width):
            out.print(Text(line, style=style), soft_wrap=True, highlight=False)


@app.command("list")
def list_command(
    state: Annotated[str, typer.Option("--state", help="open, accepted, written_off, resolved or all.")] = "open",
    code: Annotated[
        str | None,
        typer.Option(
            "--code",
            parser=_item_code,
            metavar="CODE",
            help="Only items with this code (S_COUNTER_GAP, E_…; any case).",
        ),
    ] = None,
    age: Annotated[
        int | None,
        typer.Option("--age", min=0, help="Only items at least this many business days old (the age shown)."),
    ] = None,
    card: Annotated[str | None, typer.Option("--card", help="Only items of this card (ASN, 20 hex digits).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many items.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of objects (amounts in integer fen) instead.")
    ] = False,
    gap_age_days: GapAge = None,
) -> None:
    """List queued records, oldest first, with what already moved and what each decision would do.

    Counter gaps are swept first: the ones still open after their age join the queue, queued
    ones whose counters arrived since resolve themselves. Ages are business days; times are
    Asia/Shanghai with the offset shown.
    """
    from clearing.exceptions_queue import list_items, open_counts, view

    days = _days()
    assert isinstance(days, BusinessDayClock)
    now = _now()
    card_asn = None
    if card is not None:
        card_asn = card.strip().lower()
        if not _ASN_RE.fullmatch(card_asn):
            fail(f"E_BAD_CARD_ID: card ASN {card!r} is not 20 hex digits")
    created_before = None if age is None else _created_before(age, now, days)
    with cli_errors():
        queued, resolved = _sweep(gap_age_days)
        factory = open_database()
        with factory() as session:
            items = list_items(
                session, state=None if state == "all" else state, limit=limit, code=code, card_asn=card_asn,
                created_before=created_before,
            )  # fmt: skip
            views = [view(session, i, now, days) for i in items]
            counts = open_counts(session)
    if as_json:
        typer.echo(json.dumps([_as_json(v) for v in views], indent=2, ensure_ascii=False))
        return
    if queued or resolved:
        out.print(f"gaps: {queued} newly queued, {resolved} resolved")
    filters = [
        f"--{name} {value}" for name, value in (("code", code), ("age", age), ("card", card_asn)) if value is not None
    ]
    chosen = f"{state} exceptions" + (f" ({' '.join(filters)})" if filters else "")
    if not views:
        out.print(f"no {chosen}", soft_wrap=False, highlight=False)
    else:
        out.print(Text(f"{len(views)} {chosen}, oldest first:", overflow="fold"), soft_wrap=False)
        width = out.width
        for v in views:
            out.print()
            _print_item(v, width)
    if counts:
        out.print()
        summary = "open per code: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))
        out.print(Text(summary, overflow="fold"), soft_wrap=False, highlight=False)


def _show(item_id: int) -> tuple[object, object]:
    from clearing.errors import ClearingError
    from clearing.exceptions_queue import view
    from clearing.models import ExceptionItem

    days = _days()
    assert isinstance(days, BusinessDayClock)
    factory = open_database()
    with factory() as session:
        item = session.get(ExceptionItem, item_id)
        if item is None:
            raise ClearingError(Code.E_NO_SUCH_EXCEPTION, f"no exception item {item_id}")
        seen = view(session, item, _now(), days)
        session.expunge_all()
    return item, seen


@app.command("show")
def show_command(item_id: Annotated[int, typer.Argument(help="Exception item id.")]) -> None:
    """Show one item: its message, age, amount, what moved, and what each decision would do."""
    from clearing.exceptions_queue import ItemView

    with cli_errors():
        _, seen = _show(item_id)
    assert isinstance(seen, ItemView)
    i = seen.item
    out.print(f"exception {i.id}: {i.code} ({seen.kind.value}), {i.state}, {seen.age_days} business days old")
    out.print(f"  queued {shanghai(i.created_at)}; card {i.card_asn or '-'}, terminal {i.terminal_id or '-'}")
    out.print(f"  {i.message}")
    out.print(f"  amount: {seen.amount_fen} fen; already moved: {seen.moved}")
    out.print(f"  accept would: {seen.accept.sentence}")
    out.print(f"  write-off would: {seen.write_off.sentence}")
    if i.state != "open":
        out.print(
            f"  decided by {i.decided_by} at {shanghai(i.decided_at)}: {i.note or ''} "
            f"({i.decision_transfer_id or 'no transfer'})"
        )


def _confirm(sentence: str, yes: bool) -> None:
    out.print(sentence)
    if not yes and not typer.confirm("go ahead?", default=False):
        fail("E_ABORTED: nothing was decided")


@app.command("accept")
def accept_command(
    item_id: Annotated[int, typer.Argument(help="Exception item id.")],
    note: Annotated[str | None, typer.Option("--note", help="Why it is accepted.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deciding.")] = False,
) -> None:
    """Accept a record: what that moves depends on what the ledger already holds (see `exceptions show`)."""
    from clearing.exceptions_queue import ItemView, accept
    from yikatong.commands.init import open_keystore

    with cli_errors():
        _, seen = _show(item_id)
        assert isinstance(seen, ItemView)
        _confirm(f"accept {item_id} ({seen.item.code}): {seen.accept.sentence}", yes)
        keystore = open_keystore()
        days = _days()
        assert isinstance(days, BusinessDayClock)
        factory = open_database()
        with factory() as session, session.begin():
            item = accept(session, keystore, item_id, now=_now(), note=note, decided_by=_decider(), days=days)
            transfer = item.decision_transfer_id
    out.print(f"exception {item_id} accepted" + (f"; posted transfer {transfer}" if transfer else "; nothing moved"))


@app.command("write-off")
def write_off_command(
    item_id: Annotated[int, typer.Argument(help="Exception item id.")],
    note: Annotated[str, typer.Option("--note", help="Why it is written off (required).")],
    amount_fen: Annotated[
        int | None,
        typer.Option(
            "--amount-fen",
            min=0,
            help="Posted record: fen to withhold from the operator (default 0). Held record: card value to "
            "release (default the record's amount). Others: 0 only.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deciding.")] = False,
) -> None:
    """Write a record off: what that moves depends on what the ledger already holds (see `exceptions show`)."""
    from clearing.exceptions_queue import ItemView, write_off

    with cli_errors():
        _, seen = _show(item_id)
        assert isinstance(seen, ItemView)
        amount = "" if amount_fen is None else f" with --amount-fen {amount_fen}"
        _confirm(f"write off {item_id} ({seen.item.code}){amount}: {seen.write_off.sentence}", yes)
        days = _days()
        assert isinstance(days, BusinessDayClock)
        factory = open_database()
        with factory() as session, session.begin():
            item = write_off(
                session, item_id, now=_now(), note=note, amount_fen=amount_fen, decided_by=_decider(), days=days
            )  # fmt: skip
            transfer, moved = item.decision_transfer_id, item.decision_amount_fen
    out.print(
        f"exception {item_id} written off"
        + (f"; posted transfer {transfer} ({moved} fen)" if transfer else "; nothing moved")
    )
