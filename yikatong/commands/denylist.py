"""``yikatong denylist add|remove|list``: block a card at every validator, and unblock it.

A change is one transaction that bumps the denylist version (``clearing.denylist``). That
commit *is* the publication terminals see: they poll ``GET …/denylist?since=V`` and the API
answers from the database. With Redis configured the API answers an unchanged poll from the
Redis mirror, so after the commit this command also mirrors the list there
(``denylist.publish``) and the change reaches the next poll at once. Should that fail, the
change still stands, and the API re-checks the mirror against the database within
``DENYLIST_MIRROR_CHECK_S`` (30 s) and heals it; the command says so and exits 0.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from yikatong.commands.init import cli_errors, err, open_database, out
from yikatong.commands.local_time import shanghai, shanghai_iso

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="The card denylist every validator downloads: add, remove, list.", no_args_is_help=True)

IssuerOption = Annotated[
    str | None,
    typer.Option(
        "--issuer-id",
        help="Issuer id (16 hex chars, or xianyang/xian); default: YIKATONG_CITY's issuer.",
    ),
]
AsnOption = Annotated[str, typer.Option("--card-asn", help="Card ASN (20 hex digits).")]


def _card(issuer_id: str | None, card_asn: str) -> tuple[str, str]:
    """The card as the list stores it (lower-case hex), or ``E_BAD_ISSUER`` / ``E_BAD_CARD_ID``."""
    from clearing.denylist import card_id
    from clearing.keystore import issuer_bytes
    from yikatong.settings import get_settings

    issuer = issuer_bytes(issuer_id or get_settings().city).hex()
    return card_id(issuer, card_asn)


def _check_card_known(session: Session, issuer_id: str, card_asn: str) -> None:
    """Refuse a card clearing could never see: an unregistered issuer, or one of our own ASNs that
    was never issued (most likely a typo, which would leave the real card running)."""
    from clearing.contract.codes import Code
    from clearing.errors import ClearingError
    from clearing.registry import get_card, get_issuer

    issuer = get_issuer(session, issuer_id)
    if issuer is None:
        raise ClearingError(
            Code.E_UNKNOWN_ISSUER,
            f"issuer {issuer_id} is not registered; register it first with "
            f"`yikatong issuer add --issuer-id {issuer_id} --city NAME --name TEXT`",
        )
    if issuer.own and get_card(session, issuer_id, card_asn) is None:
        raise ClearingError(
            Code.E_UNKNOWN_CARD,
            f"no card {card_asn} of our issuer {issuer_id} was issued; check the ASN (`yikatong card show --asn …`)",
        )


def _publish(factory: sessionmaker[Session]) -> str:
    """Mirror the committed list into Redis when configured; a sentence saying where it went."""
    import redis

    from clearing.denylist import publish
    from clearing.redis_bus import RedisBus
    from yikatong.settings import get_settings

    settings = get_settings()
    if not settings.redis_url:
        return "terminals get it at their next denylist poll (no Redis: the API answers from the database)"
    bus = RedisBus.from_url(settings.redis_url, prefix=settings.redis_prefix)
    try:
        with factory() as session:
            version = publish(session, bus)
    except redis.RedisError as exc:
        err.print(
            f"[bold yellow]warning:[/] E_UNAVAILABLE: the change is committed but Redis was not updated "
            f"({type(exc).__name__}); the API re-checks the mirror within 30 s",
            highlight=False,
        )
        return "terminals get it within 30 s (the API heals the Redis mirror)"
    finally:
        bus.close()
    return f"published to Redis ({settings.redis_prefix}, version {version}): terminals get it at their next poll"


@app.command("add")
def add_command(
    card_asn: AsnOption,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (1-64 printable characters), e.g. 'reported lost 2026-12-02'.")
    ],
    issuer_id: IssuerOption = None,
) -> None:
    """Put a card on the denylist: validators refuse it from their next denylist poll.

    Taps made before the entry stay valid; clearing rejects a card's taps from the moment it
    was listed (E_DENYLISTED). Adding a card already listed changes nothing.
    """
    from clearing import denylist

    with cli_errors():
        issuer, asn = _card(issuer_id, card_asn)
        factory = open_database()
        with factory() as session, session.begin():
            _check_card_known(session, issuer, asn)
            before = denylist.current_version(session)
            version = denylist.add(session, issuer, asn, reason)
        if version == before:
            out.print(f"card {asn} (issuer {issuer}) is already on the denylist; version {version}, nothing changed")
            return
        where = _publish(factory)
    out.print(f"card {asn} (issuer {issuer}) denylisted: {reason}", markup=False, highlight=False)
    out.print(f"denylist version {version}; {where}")


@app.command("remove")
def remove_command(card_asn: AsnOption, issuer_id: IssuerOption = None) -> None:
    """Take a card off the denylist (a card found again); its taps while listed stay rejected."""
    from clearing import denylist

    with cli_errors():
        issuer, asn = _card(issuer_id, card_asn)
        factory = open_database()
        with factory() as session, session.begin():
            version = denylist.remove(session, issuer, asn)
        where = _publish(factory)
    out.print(f"card {asn} (issuer {issuer}) removed from the denylist")
    out.print(f"denylist version {version}; {where}")


@app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """The cards on the denylist now, with their reason and since when (Asia/Shanghai), and the version."""
    from clearing import denylist

    with cli_errors():
        factory = open_database()
        with factory() as session:
            version = denylist.current_version(session)
            entries = denylist.live_entries(session)
    since = {(e.issuer_id, e.card_asn): dt.datetime.fromisoformat(e.effective_at) for e in entries}
    if as_json:
        listed = [
            {
                "issuer_id": e.issuer_id,
                "card_asn": e.card_asn,
                "reason": e.reason,
                "effective_at": shanghai_iso(since[e.issuer_id, e.card_asn]),
            }
            for e in entries
        ]
        typer.echo(json.dumps({"version": version, "entries": listed}, indent=2, ensure_ascii=False))
        return
    if not entries:
        out.print(f"the denylist is empty (version {version})")
        return
    # Two-line cells keep the table inside 80 columns and leave the reason the room to wrap.
    table = Table(title=f"denylist version {version}: {len(entries)} card(s)")
    table.add_column("card / issuer", no_wrap=True)
    table.add_column("since", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for e in entries:
        date, clock = shanghai(since[e.issuer_id, e.card_asn]).split(" ", 1)
        table.add_row(f"{e.card_asn}\n{e.issuer_id}", f"{date}\n{clock}", Text(e.reason))
    out.print(table, soft_wrap=False)
