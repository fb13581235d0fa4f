"""``yikatong init``: migrate the database to head and create issuer keys if missing.

Also the small shared plumbing of the clearing-side commands (keys, card issue/show,
terminal register, exceptions): open the key store and the database from the settings,
and turn known errors into one red line and exit code 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, NoReturn

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
    """The key store of the settings (KEK from ``YIKATONG_KEK`` or the dev KEK file)."""
    from clearing.keystore import KeyStore
    from yikatong.settings import get_settings

    return KeyStore.from_settings(get_settings())


def open_database() -> sessionmaker[Session]:
    """A session factory on the settings' database, migrated to head on first use."""
    from clearing.db import ensure_migrated, session_factory
    from yikatong.settings import get_settings

    return session_factory(ensure_migrated(get_settings().database_url))


def init(
    issuer: Annotated[
        list[str] | None,
        typer.Option("--issuer", help="Issuer (city name or 16 hex chars) whose keys to create if missing."),
    ] = None,
) -> None:
    """Migrate the database to the newest schema, create issuer keys that are missing, and
    register the built-in issuers (ours: YIKATONG_CITY's).

    Safe to run again: existing keys are never touched, and a database already at head is
    left as it is. Without --issuer, the configured city's issuer is used.
    """
    from clearing.keystore import KeyStore, issuer_bytes
    from clearing.registry import ensure_issuers, get_issuer
    from yikatong.settings import get_settings

    settings = get_settings()
    with cli_errors():
        factory = open_database()
        out.print(f"database ready at schema head: {_redacted(settings.database_url)}")
        store = KeyStore.from_settings(settings)
        wanted = [issuer_bytes(i).hex() for i in (issuer or [settings.city])]
        missing = [i for i in wanted if not store.has_issuer(i)]
        if missing:
            store.init(missing)
            out.print(f"created master keys (version 1) and issuer CA for: {', '.join(missing)}")
        else:
            out.print("issuer keys already present; nothing generated")
        with factory() as session, session.begin():
            ensure_issuers(session, own_city=settings.city)
            unregistered = [i for i in wanted if get_issuer(session, i) is None]
        out.print(f"key store: {store.path}")
        for issuer_hex in unregistered:
            out.print(
                f"issuer {issuer_hex} has keys but is not registered; to issue its cards run "
                f"`yikatong issuer add --issuer-id {issuer_hex} --city NAME --name TEXT --own`"
            )


def _redacted(url: str) -> str:
    """A database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - printing only; never fail on a URL we cannot parse
        return "(unparsable URL)"


__all__ = ["ISSUERS", "cli_errors", "err", "fail", "init", "open_database", "open_keystore", "out"]
