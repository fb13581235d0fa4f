"""Configuring a city fails loudly: only ``init`` creates, nothing starts without its keys, files are private.

Before: every command created a SQLite file (and its directory) at a mistyped
``YIKATONG_DATABASE_URL`` and a dev KEK next to a mistyped key store; ``serve`` started on a
key store without the city's keys; ``init`` generated fresh keys for an issuer whose cards
were already issued (after which every genuine tap is a forgery); the database was created
with the umask's mode; ``terminal register --route`` took any route.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import typer
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from clearing import db
from clearing.keystore import KeyStore
from yikatong.commands import clear, exceptions, init, issuer, keys, serve, terminal_admin
from yikatong.commands.card import app as card_app
from yikatong.settings import get_settings

runner = CliRunner()
KEK = "5a" * 32
BAOJI = "01007210ffffffff"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("init")(init.init)
    app.command("serve")(serve.serve)
    app.command("clear")(clear.clear)
    app.add_typer(keys.app, name="keys")
    app.add_typer(issuer.app, name="issuer")
    app.add_typer(card_app, name="card")
    terminal = typer.Typer()
    terminal.command("register")(terminal_admin.register)
    terminal.command("noop")(lambda: None)
    app.add_typer(terminal, name="terminal")
    return app


def _exceptions_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(exceptions.app, name="exceptions")
    app.command("noop")(lambda: None)
    return app


def run(*args: str, app: typer.Typer | None = None) -> tuple[int, str]:
    result = runner.invoke(app or _app(), list(args))
    return result.exit_code, " ".join(result.output.split())  # rich may wrap a long path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A city directory that does not exist yet; the settings point into it; uvicorn never runs."""
    root = tmp_path / "city"
    monkeypatch.chdir(tmp_path)  # no stray .env, nothing written elsewhere
    monkeypatch.setenv("YIKATONG_DATABASE_URL", f"sqlite:///{root / 'yikatong.db'}")
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(root / "keystore.json"))
    monkeypatch.setenv("YIKATONG_CITY", "xianyang")
    for name in ("YIKATONG_KEK", "YIKATONG_REDIS_URL", "YIKATONG_TARIFFS"):
        monkeypatch.delenv(name, raising=False)
    started: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: started.append(app))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def _use(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"YIKATONG_{name}", value)
    get_settings.cache_clear()


# --- only init creates ------------------------------------------------------------------------------


REFUSED_BEFORE_INIT = [
    (("serve",), "E_NO_DATABASE", "yikatong.db"),
    (("card", "show", "--asn", "71200000000000000001"), "E_NO_DATABASE", "yikatong.db"),
    (("card", "issue", "--type", "ordinary", "--out", "card.json"), "E_NO_KEYSTORE", "keystore.json"),
    (("terminal", "register", "--terminal-id", "0a0000000001", "--operator", "bus"), "E_NO_DATABASE", "yikatong.db"),
    (("issuer", "list"), "E_NO_DATABASE", "yikatong.db"),
    (
        ("issuer", "add", "--issuer-id", BAOJI, "--city", "baoji", "--name", "B", "--own"),
        "E_NO_DATABASE",
        "yikatong.db",
    ),
    (("keys", "list"), "E_NO_KEYSTORE", "keystore.json"),
    (("keys", "rotate", "--issuer", "xianyang"), "E_NO_KEYSTORE", "keystore.json"),
    (("keys", "init", "--issuer", "xianyang"), "E_NO_KEYSTORE", "keystore.json"),
]


@pytest.mark.parametrize(
    ("args", "code", "named"), REFUSED_BEFORE_INIT, ids=lambda v: "-".join(v) if isinstance(v, tuple) else None
)
def test_every_command_but_init_refuses_a_city_that_does_not_exist_and_creates_nothing(
    city: Path, args: tuple[str, ...], code: str, named: str
) -> None:
    before = tree(city.parent)
    status, said = run(*args)
    assert status == 1, said
    assert f"error: {code}: " in said and str(city / named) in said and "does not exist" in said, said
    assert "yikatong init" in said, said
    assert tree(city.parent) == before  # no database, key store, KEK or directory appeared


def test_clear_with_redis_refuses_a_city_that_does_not_exist(city: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, REDIS_URL="redis://127.0.0.1:1/0")  # never reached: refused before any worker
    status, said = run("clear", "--workers", "1")
    assert status == 1 and "E_NO_DATABASE" in said and str(city / "yikatong.db") in said, said
    assert "clearing with" not in said and not city.exists()


def test_exceptions_refuse_a_database_that_does_not_exist(city: Path) -> None:
    status, said = run("exceptions", "list", app=_exceptions_app())
    assert status == 1 and "E_NO_DATABASE" in said and str(city / "yikatong.db") in said, said
    assert not city.exists()


def test_a_missing_dev_kek_is_refused_not_replaced(city: Path) -> None:
    assert run("init")[0] == 0
    kek_file = city / "keystore.json.kek"
    kek_file.unlink()
    before = tree(city)
    status, said = run("keys", "list")
    assert status == 1 and "E_NO_KEK" in said and str(kek_file) in said, said
    assert tree(city) == before  # no new KEK that could never open the store


def test_an_empty_sqlite_file_is_refused_as_not_migrated(city: Path) -> None:
    city.mkdir()
    (city / "yikatong.db").touch()
    status, said = run("issuer", "list")
    assert status == 1 and "E_DB_NOT_MIGRATED" in said and str(city / "yikatong.db") in said, said
    assert "run `yikatong init`" in said
    assert run("init")[0] == 0
    assert run("issuer", "list")[0] == 0


def _schema_url(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


@pytest.mark.postgres
def test_an_unmigrated_postgresql_database_is_refused_until_init(
    city: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with db.isolated_schema(pg_url, prefix="t_cfg_") as schema:
        _use(monkeypatch, DATABASE_URL=_schema_url(pg_url, schema), KEK=KEK)
        status, said = run("issuer", "list")
        assert status == 1 and "E_DB_NOT_MIGRATED" in said and "holds no Yikatong schema" in said, said
        assert "run `yikatong init`" in said and "postgres" in said
        engine = db.make_engine(pg_url, schema=schema)
        try:
            assert inspect(engine).get_table_names(schema=schema) == []  # nothing migrated behind our back
            assert run("init")[0] == 0
            assert run("issuer", "list")[0] == 0
            with engine.begin() as conn:  # a database one migration behind is refused too
                conn.execute(text("UPDATE alembic_version SET version_num = '0004'"))
            status, said = run("issuer", "list")
            assert status == 1 and "E_DB_NOT_MIGRATED" in said and "revision 0004" in said, said
        finally:
            engine.dispose()


# --- personal data is private ----------------------------------------------------------------------


def test_init_creates_the_database_and_its_side_files_0600(city: Path) -> None:
    old = os.umask(0o022)
    try:
        assert run("init")[0] == 0
        database = city / "yikatong.db"
        assert database.stat().st_mode & 0o777 == 0o600
        engine = db.make_engine(f"sqlite:///{database}")
        try:
            with engine.connect() as conn:  # an open WAL connection: -wal and -shm exist now
                conn.execute(text("CREATE TABLE scratch (x INTEGER)"))
                conn.commit()
                side = [database.with_name(database.name + s) for s in ("-wal", "-shm")]
                assert all(f.exists() for f in side)
                assert [f.stat().st_mode & 0o777 for f in side] == [0o600, 0o600]
        finally:
            engine.dispose()
        for private in ("keystore.json", "keystore.json.kek"):
            assert (city / private).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_init_makes_an_existing_readable_database_private(city: Path) -> None:
    assert run("init")[0] == 0
    (city / "yikatong.db").chmod(0o644)
    assert run("init")[0] == 0
    assert (city / "yikatong.db").stat().st_mode & 0o777 == 0o600


# --- serve and clear need the keys of the issuers they clear ----------------------------------------


def test_serve_and_clear_refuse_a_key_store_without_the_citys_keys(city: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, KEK=KEK)
    assert run("init")[0] == 0
    elsewhere = city / "other.json"
    KeyStore.open(elsewhere, bytes.fromhex(KEK)).init([BAOJI])  # a key store, but not this city's
    _use(monkeypatch, KEYSTORE=str(elsewhere))
    status, said = run("serve")
    assert status == 1, said
    assert f"error: E_KEY_MISSING: key store {elsewhere} has no keys at all for issuer 01007120ffffffff" in said
    assert "yikatong init" in said and "keys import" in said
    _use(monkeypatch, REDIS_URL="redis://127.0.0.1:1/0")
    status, said = run("clear")
    assert status == 1 and "E_KEY_MISSING" in said and str(elsewhere) in said and "clearing with" not in said


def test_serve_refuses_a_key_store_without_the_key_version_of_issued_cards(
    city: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, KEK=KEK)
    assert run("init")[0] == 0
    assert run("card", "issue", "--type", "ordinary", "--out", str(city / "card.json"))[0] == 0
    newer = city / "newer.json"
    KeyStore.open(newer, bytes.fromhex(KEK)).init(["xianyang"], key_version=2)
    _use(monkeypatch, KEYSTORE=str(newer))
    status, said = run("serve")
    assert status == 1 and "E_KEY_MISSING" in said and "no key version 1" in said, said
    assert "new keys would not verify the cards already issued under key version 1" in said


def test_serve_starts_with_the_citys_keys(city: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("init")[0] == 0
    status, said = run("serve", "--port", "8499")
    assert status == 0 and "serving on http://127.0.0.1:8499" in said, said


def test_init_never_generates_keys_for_an_issuer_whose_cards_are_issued(
    city: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("init")[0] == 0
    assert run("card", "issue", "--type", "ordinary", "--out", str(city / "card.json"))[0] == 0
    mistyped = city.parent / "ctiy" / "keystore.json"
    _use(monkeypatch, KEYSTORE=str(mistyped))
    status, said = run("init")
    assert status == 1 and "E_KEY_MISSING" in said and str(mistyped) in said, said
    assert "issued under key version 1" in said and "--import-keys" in said
    assert not mistyped.parent.exists()


def test_init_imports_ceremony_keys_instead_of_generating(city: Path, tmp_path: Path) -> None:
    ceremony = tmp_path / "ceremony.json"
    keys = {name: os.urandom(16).hex() for name in ("mpk", "mlk", "mtk", "mamk")}
    entry = {"issuer_id": "01007120ffffffff", "alg_id": 0, "key_version": 1, **keys}
    ceremony.write_text(json.dumps({"issuers": [entry]}))
    status, said = run("init", "--import-keys", str(ceremony))
    assert status == 0 and "01007120ffffffff v1" in said, said
    assert "created master keys" not in said
    assert run("serve")[0] == 0


# --- errors name the thing to fix ----------------------------------------------------------------


def test_terminal_register_refuses_a_route_the_tariff_does_not_have(
    city: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("init")[0] == 0
    status, said = run("terminal", "register", "--terminal-id", "0a0000000001", "--operator", "bus", "--route", "K62")
    assert status == 1 and "E_BAD_ROUTE" in said and "'K62' is not in the tariff" in said, said
    assert "1, 19, 6, K26, ic1" in said  # the routes it could have been
    status, said = run("terminal", "register", "--terminal-id", "0a0000000001", "--operator", "bus", "--route", "K26")
    assert status == 0, said  # the refused one registered nothing
    _use(monkeypatch, TARIFFS=str(city / "no-tariffs"))
    status, said = run("terminal", "register", "--terminal-id", "0a0000000002", "--operator", "bus", "--route", "K26")
    assert status == 1 and str(city / "no-tariffs") in said and "YIKATONG_TARIFFS" in said, said


def test_a_psam_image_given_as_a_card_and_a_card_image_given_as_a_psam_are_named(city: Path) -> None:
    from cardos.image import CardImage, ImageError
    from cardos.psam import Psam, PsamImageError, psam_image_for_terminal

    assert run("init")[0] == 0
    card = city / "card.json"
    assert run("card", "issue", "--type", "ordinary", "--out", str(card))[0] == 0
    psam = city / "psam.json"
    store = KeyStore.from_settings(get_settings())
    psam_image_for_terminal(bytes.fromhex("0a0000000001"), bytes(10), store.psam_keys(["xianyang"])).save(psam)

    with pytest.raises(ImageError, match="this is a PSAM image, not a card image"):
        CardImage.load(psam)
    with pytest.raises(PsamImageError, match="this is a card image, not a PSAM image"):
        Psam.from_file(card)
    status, said = run("card", "emulate", "--image", str(psam))
    assert status == 1 and "this is a PSAM image, not a card image" in said and str(psam) in said, said
    CardImage.load(card)  # each is still read as what it is
    Psam.from_file(psam)
