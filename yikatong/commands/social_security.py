"""``yikatong social-security import FILE``: a contribution file from an employer or the bureau.

All or nothing (``docs/social-security.md``, "Import"): every row is checked; with any bad
row nothing is imported and the command lists each (line, field, code, reason) and exits 1.
The same file again imports nothing and says when it was first imported. The import is a
line in the audit log (actor ``cli``). The output names no person: counts, lines and codes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, fail, open_database, out

app = typer.Typer(help="Social security: import contribution files.", no_args_is_help=True)

CLI_ACTOR = "cli"


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="The CSV file (UTF-8; header " + "id_number,month,…,personal_fen).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
) -> None:
    """Import a contribution CSV, all or nothing; importing the same file again changes nothing."""
    from portal.modules.social_security.errors import SocialSecurityError
    from portal.modules.social_security.service import SocialSecurityService
    from yikatong.app import portal_lookup_key
    from yikatong.settings import get_settings

    try:
        raw = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    with cli_errors():
        service = SocialSecurityService(sessions=open_database(), lookup_key=portal_lookup_key(get_settings()))
        try:
            report = service.import_file(raw, file_name=file.name, actor=CLI_ACTOR)
        except SocialSecurityError as exc:
            fail(str(exc))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "digest": report.digest,
                    "imported": report.imported,
                    "replayed": report.replayed,
                    "import_id": report.import_id,
                    "rows_total": report.rows_total,
                    "rows_new": report.rows_new,
                    "rows_same": report.rows_same,
                    "bad": [{"line": b.line, "field": b.field, "code": b.code.value, "reason": b.reason}
                            for b in report.bad],
                },
                ensure_ascii=False,
            )
        )  # fmt: skip
    elif report.bad:
        table = Table(title=f"{file.name}: {len({b.line for b in report.bad})} bad row(s), nothing imported")
        for column in ("line", "field", "code", "reason"):
            table.add_column(column)
        for b in report.bad:
            table.add_row(str(b.line), b.field, b.code.value, b.reason)
        out.print(table)
    elif report.replayed:
        out.print(f"{file.name} was imported before (import {report.import_id}): nothing changed")
    else:
        out.print(
            f"imported {file.name} as import {report.import_id}: {report.rows_new} new row(s), "
            f"{report.rows_same} already on record"
        )
    if report.bad:
        raise typer.Exit(code=1)
