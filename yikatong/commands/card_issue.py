"""``yikatong card issue`` and ``card show``: personalise and register cards, show the registry entry."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, fail, open_database, open_keystore, out


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def issue(
    card_type: Annotated[str, typer.Option("--type", help="Card type: ordinary, student, senior or social-security.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the card image (JSON).")],
    issuer_id: Annotated[
        str | None,
        typer.Option(
            "--issuer-id",
            help="Issuer id (16 hex chars, or xianyang/xian), registered as ours (`issuer add --own`); "
            "default: YIKATONG_CITY's issuer.",
        ),
    ] = None,
    asn: Annotated[
        str | None, typer.Option("--asn", help="Card ASN (20 hex digits); default: the next free one.")
    ] = None,
    balance_fen: Annotated[
        int, typer.Option("--balance-fen", min=0, help="Value sold with the card at the counter (cash → card).")
    ] = 0,
    pin: Annotated[
        str | None, typer.Option("--pin", help="6-digit PIN for citizen login; social security cards get one anyway.")
    ] = None,
    holder_name: Annotated[str | None, typer.Option("--holder-name", help="Holder name for file 0x16.")] = None,
    holder_id: Annotated[str | None, typer.Option("--holder-id", help="Holder id number for file 0x16.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Personalise a card from the key store, register it with its ledger account, write its image.

    The issuer must be registered as ours (`yikatong init` for the built-in cities, `yikatong
    issuer add --own` for others) and its keys must be in the key store.

    With --balance-fen the value sold with the card is posted from the issuer float to
    the card's stored-value liability (transfer id issue:<asn>).
    """
    from clearing.errors import ClearingError
    from clearing.issuance import HolderInfo, issue_card
    from yikatong.settings import get_settings

    if out_file.exists() and not force:
        fail(f"E_EXISTS: {out_file} exists; pass --force to overwrite it")
    settings = get_settings()
    holder = HolderInfo(name=holder_name or "", id_number=holder_id or "") if (holder_name or holder_id) else None
    with cli_errors():
        try:
            store = open_keystore()
            factory = open_database()
            issuer = issuer_id or settings.city
            with factory() as session:
                from clearing.registry import ensure_issuers

                ensure_issuers(session, own_city=settings.city)
                image, card = issue_card(
                    session, store, issuer_id=issuer, card_type=card_type, asn=asn, balance_fen=balance_fen,
                    holder=holder, pin=pin, now=dt.datetime.now(dt.UTC),
                )  # fmt: skip
                out_file.parent.mkdir(parents=True, exist_ok=True)
                image.save_atomic(out_file)
                try:
                    session.commit()
                except Exception:
                    out_file.unlink(missing_ok=True)
                    raise
        except ClearingError as exc:
            fail(str(exc))
    out.print(
        f"issued {card.card_type} card [bold]{card.card_asn}[/] "
        f"(issuer {card.issuer_id}, key version {card.key_version})"
    )
    out.print(f"balance {_yuan(card.shadow_balance_fen)} CNY; image written to {out_file}")
    if image.auth is not None and pin is None:
        out.print(f"citizen-login PIN (shown once): [bold]{image.auth.pin}[/]")


def show(
    asn: Annotated[str, typer.Option("--asn", help="Card ASN (20 hex digits).")],
    issuer_id: Annotated[str | None, typer.Option("--issuer-id", help="Issuer id, if the ASN is not unique.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show a card's registry entry, its shadow balance and its ledger balance.

    Times are Asia/Shanghai with the offset shown (`2026-12-02 08:15:02 +08:00`); --json
    gives them as ISO 8601 at +08:00.
    """
    from clearing.keystore import issuer_bytes
    from clearing.ledger import account_balance, transfers_of
    from clearing.registry import find_cards, get_card
    from yikatong.commands.local_time import shanghai, shanghai_iso

    with cli_errors():
        factory = open_database()
        with factory() as session:
            if issuer_id is not None:
                found = get_card(session, issuer_bytes(issuer_id).hex(), asn)
                cards = [found] if found is not None else []
            else:
                cards = find_cards(session, asn)
            if not cards:
                fail(f"E_UNKNOWN_CARD: no card with ASN {asn}")
            if len(cards) > 1:
                fail(f"E_AMBIGUOUS_ASN: {len(cards)} issuers have ASN {asn}; pass --issuer-id")
            card = cards[0]
            ledger = account_balance(session, card.account_id)
            recent = transfers_of(session, card.account_id, limit=10)
            entry: dict[str, object] = {
                "issuer_id": card.issuer_id,
                "card_asn": card.card_asn,
                "card_type": card.card_type,
                "status": card.status,
                "issued_at": shanghai_iso(card.issued_at),
                "start_date": card.start_date.isoformat(),
                "expiry_date": card.expiry_date.isoformat(),
                "key_version": card.key_version,
                "alg_id": card.alg_id,
                "account_id": card.account_id,
                "shadow_balance_fen": card.shadow_balance_fen,
                "ledger_balance_fen": ledger.credit_balance_fen,
                "last_offline_counter": card.last_offline_counter,
                "last_online_counter": card.last_online_counter,
                "last_tx_at": shanghai_iso(card.last_tx_at),
                "auth_cert_serial": card.auth_cert_serial,
                "recent_transfers": [
                    {
                        "id": t.id,
                        "amount_fen": t.amount_fen if t.credit_account_id == card.account_id else -t.amount_fen,
                        "state": t.state,
                        "created_at": shanghai_iso(t.created_at),
                    }
                    for t in recent
                ],
            }
    if as_json:
        typer.echo(json.dumps(entry, indent=2))
        return
    table = Table(title=f"card {card.card_asn}", show_header=False)
    times = {"issued_at": card.issued_at, "last_tx_at": card.last_tx_at}
    for key, value in entry.items():
        if key == "recent_transfers":
            continue
        if key in times:
            shown = shanghai(times[key])
        elif key.endswith("_fen") and isinstance(value, int):
            shown = f"{value} ({_yuan(value)} CNY)"
        else:
            shown = str(value)
        table.add_row(key, shown)
    out.print(table)
    if recent:
        history = Table(title="recent transfers")
        for column in ("id", "amount (fen)", "state", "at"):
            history.add_column(column)
        for t in recent:
            signed = t.amount_fen if t.credit_account_id == card.account_id else -t.amount_fen
            history.add_row(t.id, str(signed), t.state, shanghai(t.created_at))
        out.print(history)
