"""The clearing-side CLI: keys, card issue/show, terminal register, exceptions, init (on SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cardos.image import CardImage
from clearing.keystore import KEY_NAMES, KeyStore, load_or_create_dev_kek
from yikatong.commands import exceptions, init, issuer, keys, terminal_admin
from yikatong.commands.card import app as card_app
from yikatong.settings import get_settings

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("YIKATONG_DATABASE_URL", f"sqlite:///{tmp_path / 'y.db'}")
    monkeypatch.setenv("YIKATONG_KEYSTORE", str(tmp_path / "var" / "keystore.json"))
    monkeypatch.delenv("YIKATONG_KEK", raising=False)
    monkeypatch.setenv("YIKATONG_CITY", "xianyang")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _admin_app() -> typer.Typer:
    """The commands the lead wires into ``yikatong``; assembled here the same way."""
    app = typer.Typer()
    app.command("init")(init.init)
    app.add_typer(keys.app, name="keys")
    app.add_typer(card_app, name="card")
    terminal = typer.Typer()
    terminal.command("register")(terminal_admin.register)
    terminal.command("noop")(lambda: None)
    app.add_typer(terminal, name="terminal")
    app.add_typer(exceptions.app, name="exceptions")
    app.add_typer(issuer.app, name="issuer")
    return app


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(_admin_app(), list(args))
    return result.exit_code, result.output


def test_keys_init_list_rotate_and_refusal(env: Path) -> None:
    assert _run("init")[0] == 0  # only init creates the key store (test_city_config.py)
    code, output = _run("keys", "init", "--issuer", "xian")
    assert code == 0, output
    assert "01007100ffffffff" in output
    code, output = _run("keys", "init", "--issuer", "xianyang")
    assert code == 1 and "E_KEYS_EXIST" in output
    code, output = _run("keys", "rotate", "--issuer", "xianyang")
    assert code == 0 and "version 2" in output
    code, output = _run("keys", "list")
    assert code == 0 and "01007100ffffffff" in output

    store = KeyStore.open(env / "var" / "keystore.json", load_or_create_dev_kek(env / "var" / "keystore.json"))
    masters = [store._master(i, v, n) for i in store.issuers() for v in store.versions(i) for n in KEY_NAMES]
    code, everything = _run("keys", "list")
    for key in masters:
        assert key.hex() not in output.lower() and key.hex() not in everything.lower()


def test_keys_import_ceremony_file(env: Path) -> None:
    file = env / "ceremony.json"
    entry = {"issuer_id": "01007120ffffffff", "alg_id": 0, "key_version": 1}
    file.write_text(json.dumps({"issuers": [{**entry, **{n: "a5" * 16 for n in KEY_NAMES}}]}))
    assert _run("init", "--issuer", "xian")[0] == 0  # a key store without Xianyang's keys
    code, output = _run("keys", "import", str(file))
    assert code == 0 and "imported" in output
    code, output = _run("keys", "import", str(env / "missing.json"))
    assert code == 1 and "E_CEREMONY_FILE" in output


def test_card_issue_writes_an_image_registers_and_show_reports_it(env: Path) -> None:
    assert _run("init")[0] == 0
    out_file = env / "cards" / "c1.json"
    code, output = _run(
        "card", "issue", "--type", "social-security", "--balance-fen", "2500", "--pin", "123456", "--out", str(out_file)
    )
    assert code == 0, output
    image = CardImage.load(out_file)
    assert image.purse.balance_fen == 2500 and image.auth is not None
    asn = image.public[10:20].hex()
    code, output = _run("card", "show", "--asn", asn, "--json")
    assert code == 0, output
    shown = json.loads(output)
    assert shown["shadow_balance_fen"] == shown["ledger_balance_fen"] == 2500
    assert shown["card_type"] == "social_security"
    assert shown["recent_transfers"][0]["id"] == f"issue:{asn}"
    code, output = _run("card", "show", "--asn", asn)
    assert code == 0 and "25.00 CNY" in output
    # refuses to overwrite the image, and unknown cards are a clear error
    code, output = _run("card", "issue", "--type", "ordinary", "--out", str(out_file))
    assert code == 1 and "E_EXISTS" in output
    code, output = _run("card", "show", "--asn", "7120" + "0" * 16)
    assert code == 1 and "E_UNKNOWN_CARD" in output
    code, output = _run("card", "issue", "--type", "gold", "--out", str(env / "x.json"))
    assert code == 1 and "E_BAD_CARD_TYPE" in output and not (env / "x.json").exists()


def test_terminal_register_prints_the_token_once(env: Path) -> None:
    assert _run("init")[0] == 0
    code, output = _run(
        "terminal", "register", "--terminal-id", "0000000000A1", "--operator", "xy-bus-1", "--route", "K26"
    )
    assert code == 0, output
    token = output.strip().splitlines()[-1]
    assert len(token) >= 40
    code, output = _run("terminal", "register", "--terminal-id", "0000000000a1", "--operator", "xy-bus-1")
    assert code == 1 and "E_TERMINAL_EXISTS" in output


def test_exceptions_commands(env: Path) -> None:
    assert _run("init")[0] == 0
    code, output = _run("exceptions", "list")
    assert code == 0 and "no open exceptions" in output
    code, output = _run("exceptions", "accept", "42")
    assert code == 1 and "E_NO_SUCH_EXCEPTION" in output
    code, output = _run("exceptions", "write-off", "42")
    assert code == 2 and "Missing option" in output and "--note" in output  # a usage error: nothing ran
    code, output = _run("exceptions", "list", "--state", "bogus")
    assert code == 1 and "E_BAD_STATE" in output


BAOJI = "01007210ffffffff"


def test_a_registered_issuer_with_keys_issues_cards_from_the_cli(env: Path) -> None:
    assert _run("init")[0] == 0
    out_file = env / "cards" / "baoji.json"
    code, output = _run("card", "issue", "--type", "ordinary", "--issuer-id", BAOJI, "--out", str(out_file))
    assert code == 1 and "E_UNKNOWN_ISSUER" in output and "issuer add" in output and not out_file.exists()
    code, output = _run(
        "issuer", "add", "--issuer-id", BAOJI.upper(), "--city", "baoji", "--city-code", "7210",
        "--name", "Baoji Transit Card", "--own",
    )  # fmt: skip
    assert code == 0 and "ours" in output, output
    code, output = _run("card", "issue", "--type", "ordinary", "--issuer-id", BAOJI, "--out", str(out_file))
    assert code == 1 and "E_KEY_MISSING" in output and "keys init" in output
    assert _run("keys", "init", "--issuer", BAOJI)[0] == 0
    code, output = _run("card", "issue", "--type", "ordinary", "--issuer-id", BAOJI, "--out", str(out_file))
    assert code == 0, output
    image = CardImage.load(out_file)
    assert image.public[:8].hex() == BAOJI and image.public[10:20].hex().startswith("7210")
    code, output = _run("issuer", "list")
    assert code == 0 and BAOJI in output and "7210" in output and "peer" in output  # Xi'an is a peer here


def test_issuer_add_refuses_bad_and_conflicting_details(env: Path) -> None:
    assert _run("init")[0] == 0
    code, output = _run("issuer", "add", "--issuer-id", BAOJI, "--city", "baoji", "--city-code", "72", "--name", "B")
    assert code == 1 and "E_BAD_ISSUER" in output and "city code" in output
    assert _run("issuer", "add", "--issuer-id", BAOJI, "--city", "baoji", "--name", "Baoji")[0] == 0  # a peer
    code, output = _run("issuer", "add", "--issuer-id", BAOJI, "--city", "baoji", "--name", "Baoji")
    assert code == 0  # the same again: nothing to do
    code, output = _run("issuer", "add", "--issuer-id", BAOJI, "--city", "baoji", "--name", "Baoji", "--own")
    assert code == 1 and "E_ISSUER_EXISTS" in output


def test_configured_as_xian_init_and_card_issue_make_xian_cards(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIKATONG_CITY", "xian")
    get_settings.cache_clear()
    assert _run("init")[0] == 0
    out_file = env / "xian.json"
    code, output = _run("card", "issue", "--type", "ordinary", "--out", str(out_file))
    assert code == 0, output
    image = CardImage.load(out_file)
    assert image.public[:8].hex() == "01007100ffffffff" and image.public[10:20].hex().startswith("7100")
    code, output = _run("card", "issue", "--type", "ordinary", "--issuer-id", "xianyang", "--out", str(env / "x.json"))
    assert code == 1 and "E_NOT_OUR_ISSUER" in output
