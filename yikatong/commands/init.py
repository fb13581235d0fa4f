"""``yikatong init``: create the city (database, key store, KEK) or bring it to this version.

Only ``init`` creates a database, a key store, a KEK or their directories; every other
command opens them with ``open_database`` / ``open_keystore``, which refuse a path that does
not exist (or a database not at head) and name it, so a mistyped setting is an error rather
than a new, empty city. ``ready_to_clear`` is what ``serve`` and ``clear`` check first.

Also the small shared plumbing of the clearing-side commands (keys, card issue/show,
terminal register, exceptions): turn known errors into one red line and exit code 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cardos.profile import ISSUERS

if TYPE_CHECKING:
    from clearing.keystore import KeyStore

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> NoReturn:
    """Print ``error: CODE: sentence`` on stderr and exit 1."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=1)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Known failures become one line and exit 1; a traceback is for bugs only."""
    from clearing.errors import ClearingError

    try:
        yield
    except ClearingError as exc:
        fail(str(exc))
    except SQLAlchemyError as exc:
        fail(f"E_DATABASE: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    except OSError as exc:
        fail(f"E_IO: {exc}")


def open_keystore() -> KeyStore:
    """The settings' existing key store (KEK from ``YIKATONG_KEK`` or the dev KEK file); creates nothing."""
    from clearing.keystore import KeyStore
    from yikatong.settings import get_settings

    return KeyStore.from_settings(get_settings())


def open_database() -> sessionmaker[Session]:
    """A session factory on the settings' existing database at schema head; creates and migrates nothing."""
    from clearing.db import open_migrated, session_factory
    from yikatong.settings import get_settings

    return session_factory(open_migrated(get_settings().database_url))


def ready_to_clear(settings: Any) -> None:
    """Refuse to start clearing without the database and the keys of every issuer it clears.

    ``serve`` and ``clear`` call this first: without its keys a genuine tap could only wait in
    the exception queue (``E_KEY_UNAVAILABLE``), so a server that lacks them must not start.
    """
    from clearing.db import open_migrated, session_factory
    from clearing.keystore import KeyStore
    from clearing.registry import cleared_issuers

    engine = open_migrated(settings.database_url)
    try:
        store = KeyStore.from_settings(settings)
        with session_factory(engine)() as session:
            cleared = cleared_issuers(session, own_city=settings.city)
        store.require(cleared)
    finally:
        engine.dispose()


def init(
    issuer: Annotated[
        list[str] | None,
        typer.Option("--issuer", help="Issuer (city name or 16 hex chars) whose keys to create if missing."),
    ] = None,
    import_keys: Annotated[
        Path | None,
        typer.Option(
            "--import-keys",
            help="Key-ceremony JSON file to import instead of generating keys (spec/terminal-api.md, Administration).",
        ),
    ] = None,
) -> None:
    """Create the database (migrated to the newest schema), the key store and its KEK where missing,
    create issuer keys that are missing (or import them with --import-keys), and register the
    built-in issuers (ours: YIKATONG_CITY's).

    Safe to run again: existing keys are never touched, and a database already at head is
    left as it is. Without --issuer, the configured city's issuer is used. Keys are never
    generated for an issuer whose cards are registered (new keys would not verify them).
    """
    from clearing.db import ensure_migrated, redacted_url, session_factory
    from clearing.keystore import KeyStore, issuer_bytes
    from clearing.registry import cleared_issuers, ensure_issuers, get_issuer
    from yikatong.settings import get_settings

    settings = get_settings()
    with cli_errors():
        factory = session_factory(ensure_migrated(settings.database_url))
        out.print(f"database ready at schema head: {redacted_url(settings.database_url)}")
        with factory() as session, session.begin():
            ensure_issuers(session, own_city=settings.city)
            in_use = cleared_issuers(session, own_city=settings.city)
        wanted = [issuer_bytes(i).hex() for i in (issuer or [settings.city])]
        if import_keys is None and not Path(settings.keystore).is_file():
            refuse_new_keys_for_issued_cards(Path(settings.keystore), wanted, in_use)  # before creating anything
        store = KeyStore.from_settings(settings, create=True)
        if import_keys is not None:
            imported = store.import_ceremony(import_keys)
            shown = ", ".join(f"{i} v{v}" for i, v in imported) or "nothing new"
            out.print(f"imported keys from {import_keys}: {shown}")
        else:
            missing = [i for i in wanted if not store.has_issuer(i)]
            refuse_new_keys_for_issued_cards(store.path, missing, in_use)
            if missing:
                store.init(missing)
                out.print(f"created master keys (version 1) and issuer CA for: {', '.join(missing)}")
            else:
                out.print("issuer keys already present; nothing generated")
        store.ensure_file()
        with factory() as session:
            unregistered = [i for i in store.issuers() if get_issuer(session, i) is None]
        out.print(f"key store: {store.path}")
        for issuer_hex in unregistered:
            out.print(
                f"issuer {issuer_hex} has keys but is not registered; to issue its cards run "
                f"`yikatong issuer add --issuer-id {issuer_hex} --city NAME --name TEXT --own`"
            )


def refuse_new_keys_for_issued_cards(store: Path, missing: list[str], in_use: dict[str, set[int]]) -> None:
    """A key store without the keys of cards already issued is the wrong one (a mistyped
    YIKATONG_KEYSTORE, a lost file): fresh keys would make every genuine tap a forgery."""
    from clearing.contract.codes import Code
    from clearing.errors import ClearingError

    for issuer_hex in missing:
        versions = sorted(in_use.get(issuer_hex, ()))
        if versions:
            raise ClearingError(
                Code.E_KEY_MISSING,
                f"key store {store} has no keys for issuer {issuer_hex}, but the database has its cards "
                f"issued under key version {', '.join(map(str, versions))}; new keys would not verify them: "
                "check YIKATONG_KEYSTORE, restore the key store, or `yikatong init --import-keys FILE`",
            )


__all__ = [
    "ISSUERS",
    "cli_errors",
    "err",
    "fail",
    "init",
    "open_database",
    "open_keystore",
    "out",
    "ready_to_clear",
    "refuse_new_keys_for_issued_cards",
]
