"""``yikatong interop``: one exchange round with the peer city by hand, and the channel's keys.

``exchange`` runs what ``serve`` runs every ``YIKATONG_INTEROP_EXCHANGE_INTERVAL_S``: collect
forwarded records, build batches, deliver the due ones to ``YIKATONG_PEER_URL``, apply the
verdicts (``interop_xian.exchange``). Exit 1 when a batch could not be delivered (the report
names it and why); everything else of the round still happened and the next round retries.

``keys`` manages the Ed25519 keys of the channel (``docs/interop.md``, "Signatures and keys"):
``rotate`` makes a new signing key (the first one, too), ``export`` prints our public keys for
the peer, ``import FILE`` takes the peer's export, ``list`` shows both with their fingerprints.
Private keys are never shown.

``report`` prints, per window with the peer, what was sent, acknowledged, accepted, rejected and
disputed, and the bilateral net position (``interop_xian.reports``); ``--csv`` as a CSV.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, fail, out

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from interop_xian.keys import SigningKeys

app = typer.Typer(help="Cross-city clearing with the peer city: exchange rounds and the channel's keys.",
                  no_args_is_help=True)  # fmt: skip
keys_app = typer.Typer(help="The channel's Ed25519 keys: rotate, export, import, list.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@contextmanager
def _errors() -> Iterator[None]:
    from interop_xian.errors import InteropError

    with cli_errors():
        try:
            yield
        except InteropError as exc:
            fail(str(exc))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _engine() -> Engine:
    from clearing.db import open_migrated
    from yikatong.settings import get_settings

    return open_migrated(get_settings().database_url)


@app.command("exchange")
def exchange(
    as_json: Annotated[bool, typer.Option("--json", help="print the round's report as JSON, nothing else")] = False,
    no_send: Annotated[
        bool, typer.Option("--no-send", help="collect and build batches and apply verdicts, but call no peer")
    ] = False,
) -> None:
    """Run one exchange round with the peer: batches, verdicts, dispute moves, and the windows due to close."""
    from clearing.business_day import clock_from_settings
    from clearing.keystore import KeyStore
    from interop_xian.exchange import UnavailableJudge, node_from_settings
    from yikatong.settings import get_settings

    settings = get_settings()
    with _errors():
        engine = _engine()
        try:
            node = node_from_settings(
                settings, engine, KeyStore.from_settings(settings), days=clock_from_settings(settings),
                judge=UnavailableJudge(),  # a round only sends; the server judges what it receives
            )  # fmt: skip
            report = node.exchange(deliver=not no_send)
        finally:
            engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.as_json(), sort_keys=True))
    else:
        table = Table(title=f"interop exchange {settings.city} → {node.config.peer_city}", show_header=False)
        table.add_row("forwarded records collected", str(report.collected))
        table.add_row("batches built", ", ".join(map(str, report.built)) or "none")
        table.add_row("batches acknowledged", ", ".join(map(str, report.acknowledged)) or "none")
        if report.resent:
            table.add_row("batches resent (the peer had lost them)", ", ".join(map(str, report.resent)))
        table.add_row("items accepted", f"{report.accepted} ({report.accepted_fen} fen)")
        table.add_row("items rejected", str(report.rejected))
        table.add_row("outbox", ", ".join(f"{k} {v}" for k, v in sorted(report.outbox.items())) or "empty")
        moves = f"{report.messages_delivered} delivered"
        if report.messages_refused:
            moves += f", {len(report.messages_refused)} refused (see the alarms)"
        if report.messages_failed:
            moves += f", {len(report.messages_failed)} waiting for the peer"
        table.add_row("dispute moves", moves)
        windows = ", ".join(f"{day} {state}" for day, state in sorted(report.windows.items()))
        table.add_row("windows", windows or "none due")
        if report.windows_stopped:
            table.add_row("window close stopped at", report.windows_stopped)
        out.print(table)
    if report.failed:
        if not as_json:
            for sequence, why in sorted(report.failed.items()):
                out.print(f"[red]not delivered:[/] batch {sequence}: {why}", highlight=False)
        fail(f"{len(report.failed)} batch(es) not delivered; the next round retries (with backoff)")


def _signing() -> SigningKeys:
    from interop_xian.keys import SigningKeys
    from yikatong.settings import get_settings

    return SigningKeys.from_settings(get_settings())


@keys_app.command("rotate")
def rotate() -> None:
    """Make a new signing key and sign with it from now on; the previous one is still exported for the overlap."""
    from interop_xian.config import InteropSettings

    with _errors():
        signing = _signing()
        overlap = dt.timedelta(seconds=InteropSettings().key_overlap_s)
        info = signing.rotate(now=_now(), overlap=overlap)
    out.print(f"new signing key {info.key_id} for {signing.city} (file {signing.path})")
    out.print("give the peer `yikatong interop keys export` and read it the fingerprint before it imports")


@keys_app.command("export")
def export(
    out_file: Annotated[Path | None, typer.Option("--out", help="write the document here instead of stdout")] = None,
) -> None:
    """Print our public keys (the document the peer imports)."""
    with _errors():
        signing = _signing()
        document = signing.export(now=_now())
        if not document["keys"]:
            fail("E_INTEROP_NO_SIGNING_KEY: no signing key yet; run `yikatong interop keys rotate` first")
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        if out_file is None:
            typer.echo(text, nl=False)
        else:
            out_file.write_text(text, encoding="utf-8")
            out.print(f"public keys of {signing.city} written to {out_file}")


@keys_app.command("import")
def import_keys(
    file: Annotated[Path, typer.Argument(help="the peer's `interop keys export` document", exists=True,
                                         dir_okay=False, readable=True)],
) -> None:  # fmt: skip
    """Import the peer's public keys; keys it no longer lists retire after the overlap."""
    from sqlalchemy.orm import Session

    from interop_xian.config import InteropSettings
    from interop_xian.keys import import_peer_keys
    from yikatong.settings import get_settings

    with _errors():
        engine = _engine()
        try:
            with Session(engine) as session, session.begin():
                result = import_peer_keys(
                    session, file.read_bytes(), own_city=get_settings().city, now=_now(),
                    overlap=dt.timedelta(seconds=InteropSettings().key_overlap_s),
                )  # fmt: skip
        finally:
            engine.dispose()
    for key_id in result.added:
        out.print(f"imported peer key {key_id}")
    for key_id in result.retired:
        out.print(f"peer key {key_id} retires (see `yikatong interop keys list`)")
    if not result.added and not result.retired:
        out.print("nothing new: every key of the document was already held")


@keys_app.command("list")
def list_keys() -> None:
    """Our signing keys and the peer's public keys, with fingerprints and retirement."""
    from sqlalchemy.orm import Session

    from interop_xian.keys import peer_keys

    now = _now()
    with _errors():
        signing = _signing()
        own = signing.keys()
        engine = _engine()
        try:
            with Session(engine) as session:
                peers = [(k.peer_city, k.key_id, k.created_at, k.retire_at) for k in peer_keys(session)]
        finally:
            engine.dispose()
    table = Table(title="interop keys")
    for column in ("whose", "key id (fingerprint)", "created", "retires", "state"):
        table.add_column(column, overflow="fold")
    for n, k in enumerate(own):
        state = "signing" if n == len(own) - 1 else ("accepted" if k.accepted_at(now) else "retired")
        table.add_row(f"ours ({signing.city})", k.key_id, _day(k.created_at), _day(k.retire_at), state)
    for city, key_id, created, retire in peers:
        state = "accepted" if retire is None or now < retire else "retired"
        table.add_row(f"peer ({city})", key_id, _day(created), _day(retire), state)
    out.print(table)


@app.command("report")
def report(
    day: Annotated[list[str] | None, typer.Option("--day", help="a window (YYYY-MM-DD); repeat for more. "
                                                  "Default: every window with a position or a forward")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="print the CSV of reports.report_csv, nothing else")] = False,
) -> None:  # fmt: skip
    """Per window with the peer: sent, acknowledged, accepted, rejected, disputed, and the net position."""
    from sqlalchemy import select, union
    from sqlalchemy.orm import Session

    from clearing.business_day import clock_from_settings
    from clearing.models import InteropForward
    from interop_xian.config import peer_of
    from interop_xian.models import Booking
    from interop_xian.reports import report_csv, report_lines, window_report
    from yikatong.settings import get_settings

    settings = get_settings()
    peer = peer_of(settings.city)
    with _errors():
        try:
            days = sorted({dt.date.fromisoformat(d) for d in day or ()})
        except ValueError:
            fail("E_BAD_DAY: --day is YYYY-MM-DD")
        engine = _engine()
        try:
            with Session(engine) as session:
                if not days:
                    query = union(
                        select(Booking.window_day).where(Booking.peer_city == peer),
                        select(InteropForward.business_day),
                    )
                    days = sorted({d for (d,) in session.execute(query) if d is not None})
                reports = [window_report(session, peer, d, days=clock_from_settings(settings)) for d in days]
        finally:
            engine.dispose()
    if as_csv:
        typer.echo(report_csv(reports).decode("utf-8"), nl=False)
        return
    if not reports:
        out.print(f"no window with {peer} yet")
        return
    for r in reports:
        for line in report_lines(r):
            out.print(line, highlight=False)
    net = sum((r.position.net_fen if r.position is not None else 0) for r in reports)
    who = f"{settings.city} owes {peer}" if net > 0 else f"{peer} owes {settings.city}"
    out.print(f"net over these windows: {net} fen ({who} {abs(net)} fen)", highlight=False)


def _day(moment: dt.datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


__all__ = ["app"]
