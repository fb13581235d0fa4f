"""``yikatong keys``: create, import, rotate and list issuer master keys (never showing them).

The key store file and its KEK come from the settings (``YIKATONG_KEYSTORE``,
``YIKATONG_KEK``); see ``docs/keystore.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from yikatong.commands.init import cli_errors, out

if TYPE_CHECKING:
    from clearing.keystore import KeyStore

app = typer.Typer(
    help="Issuer master keys: init, import, rotate, list (key material is never shown).", no_args_is_help=True
)


def _store() -> KeyStore:
    from clearing.keystore import KeyStore
    from yikatong.settings import get_settings

    return KeyStore.from_settings(get_settings())


@app.command("init")
def init_keys(
    issuer: Annotated[
        list[str] | None,
        typer.Option("--issuer", help="Issuer: city name (xianyang, xian) or 16 hex chars. Repeatable."),
    ] = None,
    alg_id: Annotated[int, typer.Option("--alg-id", help="Algorithm id: 0 (3DES) or 4 (SM4).")] = 0,
) -> None:
    """Generate fresh master keys (MPK, MLK, MTK, MAMK; version 1) and an issuer CA.

    Refuses to overwrite an issuer that already has keys (use `keys rotate`).
    Without --issuer, the configured city's issuer is used.
    """
    from clearing.keystore import issuer_bytes
    from yikatong.settings import get_settings

    with cli_errors():
        store = _store()
        wanted = [issuer_bytes(i).hex() for i in (issuer or [get_settings().city])]
        _refuse_keys_for_issued_cards(store, [i for i in wanted if not store.has_issuer(i)])
        created = store.init(wanted, alg_id=alg_id)
        for issuer_hex in created:
            out.print(f"issuer {issuer_hex}: master keys version 1 and issuer CA created")
        out.print(f"key store: {store.path}")


def _refuse_keys_for_issued_cards(store: KeyStore, missing: list[str]) -> None:
    """Fresh keys for an issuer whose cards are registered would make each of its taps a forgery."""
    from clearing.db import open_migrated, session_factory
    from clearing.errors import ClearingError
    from clearing.registry import cleared_issuers
    from yikatong.commands.init import refuse_new_keys_for_issued_cards
    from yikatong.settings import get_settings

    settings = get_settings()
    try:
        engine = open_migrated(settings.database_url)
    except ClearingError:
        return  # no city database yet: no card can have been issued under these keys
    try:
        with session_factory(engine)() as session:
            in_use = cleared_issuers(session, own_city=settings.city)
    finally:
        engine.dispose()
    refuse_new_keys_for_issued_cards(store.path, missing, in_use)


@app.command("import")
def import_keys(
    file: Annotated[Path, typer.Argument(help="Key-ceremony JSON file (spec/terminal-api.md, Administration).")],
) -> None:
    """Import master keys from a key-ceremony file into the encrypted key store.

    An issuer and version already held with the same keys is skipped; with other keys the
    import is refused and nothing is written.
    """
    with cli_errors():
        store = _store()
        imported = store.import_ceremony(file)
        if not imported:
            out.print("nothing new: every issuer and key version in the file is already held")
        for issuer_hex, version in imported:
            out.print(f"issuer {issuer_hex}: key version {version} imported")


@app.command("rotate")
def rotate_keys(
    issuer: Annotated[str, typer.Option("--issuer", help="Issuer: city name or 16 hex chars.")],
) -> None:
    """Add a new key version for an issuer; new cards get it, old versions stay usable."""
    with cli_errors():
        store = _store()
        from clearing.keystore import issuer_bytes

        version = store.rotate(issuer)
        out.print(f"issuer {issuer_bytes(issuer).hex()}: key version {version} is now current for new cards")


@app.command("list")
def list_keys() -> None:
    """List issuers and key versions (algorithm, which keys are held, creation time)."""
    with cli_errors():
        store = _store()
        rows = store.list_versions()
        if not rows:
            out.print("the key store holds no keys yet (run `yikatong keys init`)")
            return
        table = Table(title=f"key store {store.path}")
        table.add_column("issuer", no_wrap=True, min_width=16)
        for column in ("version", "alg", "keys", "created", "current"):
            table.add_column(column)
        for v in rows:
            alg = {0: "3DES", 4: "SM4"}.get(v.alg_id, str(v.alg_id))
            table.add_row(
                v.issuer_id, str(v.key_version), alg, ",".join(v.keys), v.created_at[:10], "yes" if v.current else ""
            )
        out.print(table)
