"""``yikatong card show``: times in Asia/Shanghai with the zone shown; JSON as ISO 8601 at +08:00."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from clirun import run
from sqlalchemy import select

from clearing import db
from clearing.models import Card, Transfer
from yikatong.settings import get_settings

ASN = "71200000000000000001"
LOCAL = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \+08:00")


def _stored() -> tuple[dt.datetime, dt.datetime]:
    """The card's issue time and its sale transfer's time, as clearing stores them (UTC)."""
    engine = db.make_engine(get_settings().database_url)
    try:
        with engine.connect() as conn:
            issued = conn.execute(select(Card.issued_at).where(Card.card_asn == ASN)).scalar_one()
            sold = conn.execute(select(Transfer.created_at).where(Transfer.id == f"issue:{ASN}")).scalar_one()
    finally:
        engine.dispose()
    return issued, sold


def test_card_show_gives_every_time_in_shanghai_with_its_offset(city: Path) -> None:
    issued = run(
        "card", "issue", "--type", "ordinary", "--asn", ASN, "--balance-fen", "5000", "--out", str(city / "c.json")
    )
    assert issued.exit_code == 0, issued.output
    issued_at, sold_at = _stored()
    result = run("card", "show", "--asn", ASN, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["issued_at"].endswith("+08:00") and shown["recent_transfers"][0]["created_at"].endswith("+08:00")
    # the same instants, written at +08:00 (to the second)
    assert dt.datetime.fromisoformat(shown["issued_at"]) == issued_at.replace(microsecond=0)
    assert dt.datetime.fromisoformat(shown["recent_transfers"][0]["created_at"]) == sold_at.replace(microsecond=0)
    assert shown["last_tx_at"] is None
    table = run("card", "show", "--asn", ASN, columns=120)
    assert table.exit_code == 0, table.output
    local = issued_at.astimezone(dt.timezone(dt.timedelta(hours=8)))
    assert f"{local:%Y-%m-%d %H:%M:%S} +08:00" in table.stdout
    issued_line = next(line for line in table.stdout.splitlines() if "issued_at" in line)
    assert LOCAL.search(issued_line), issued_line
    sale_line = next(line for line in table.stdout.splitlines() if f"issue:{ASN}" in line)
    assert LOCAL.search(sale_line), sale_line
    assert "+00:00" not in table.stdout
