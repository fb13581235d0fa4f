"""``yikatong terminal psam``: a registered terminal's PSAM, from the key store, written 0600, keys never shown."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import msgspec
from clirun import run

from cardos import crypto
from cardos.psam import PsamImage
from cardos.records import SHANGHAI_TZ
from clearing import db
from clearing.contract import TapRecord
from clearing.ingest import TacKeys, keystore_dtk, make_ingestor, prepare
from clearing.keystore import KeyStore
from tests.clearing.tapfactory import Card, Terminal
from yikatong.settings import get_settings

TERMINAL = "0a0000000001"
XIANYANG = "01007120ffffffff"
XIAN = "01007100ffffffff"


def _register(terminal_id: str = TERMINAL) -> str:
    result = run("terminal", "register", "--terminal-id", terminal_id, "--operator", "Xianyang Bus", "--route", "K26")
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def _store() -> KeyStore:
    return KeyStore.from_settings(get_settings())


def _master_hex(store: KeyStore) -> list[str]:
    return [
        store._master(i, v, name).hex()
        for i in store.issuers()
        for v in store.versions(i)
        for name in ("mpk", "mlk", "mtk", "mamk")
    ]


def test_psam_of_a_registered_terminal_holds_the_store_keys_and_the_output_none(city: Path) -> None:
    _register()
    out_file = city / "psam.json"
    result = run("terminal", "psam", "--terminal-id", TERMINAL.upper(), "--out", str(out_file))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    image = PsamImage.load(out_file)
    store = _store()
    assert image.terminal_id.hex() == TERMINAL and image.ttc_next == 1
    held = {(k.issuer_id.hex(), k.key_version): (k.mpk, k.mamk, k.alg_id, k.mtk) for k in image.issuers}
    mpk, mamk, version, alg = store.psam_keys([XIANYANG])[bytes.fromhex(XIANYANG)]
    assert held == {(XIANYANG, version): (mpk, mamk, alg, None)} and version == 1  # a field PSAM: no TAC master key
    said = result.output.lower()
    assert str(out_file) in result.output and TERMINAL in said and "0600" in said
    assert f"issuer {XIANYANG} (xianyang): key version(s) 1" in said
    assert f"issuer {XIAN} (xian) is registered but has no keys here" in said and "keys import" in said
    for key in _master_hex(store):
        assert key not in said
    # the card emulator takes it as it is
    assert json.loads(out_file.read_text())["kind"] == "psam"


def test_an_unregistered_terminal_is_refused_with_the_command_to_register_it(city: Path) -> None:
    out_file = city / "psam.json"
    result = run("terminal", "psam", "--terminal-id", TERMINAL, "--out", str(out_file))
    assert result.exit_code == 1
    assert f"error: E_UNKNOWN_TERMINAL: terminal {TERMINAL} is not registered" in result.stderr
    assert f"yikatong terminal register --terminal-id {TERMINAL} --operator" in result.stderr
    assert not out_file.exists()
    result = run("terminal", "psam", "--terminal-id", "0a00", "--out", str(out_file))
    assert result.exit_code == 1 and "error: E_BAD_TERMINAL_ID" in result.stderr and not out_file.exists()


def test_an_existing_file_is_kept_unless_force(city: Path) -> None:
    _register()
    out_file = city / "psam.json"
    out_file.write_text("precious")
    result = run("terminal", "psam", "--terminal-id", TERMINAL, "--out", str(out_file))
    assert result.exit_code == 1 and "error: E_EXISTS" in result.stderr and "--force" in result.stderr
    assert out_file.read_text() == "precious"
    result = run("terminal", "psam", "--terminal-id", TERMINAL, "--out", str(out_file), "--force")
    assert result.exit_code == 0, result.output
    assert PsamImage.load(out_file).terminal_id.hex() == TERMINAL
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600


def test_every_key_version_goes_in_so_cards_issued_before_a_rotation_still_work(city: Path) -> None:
    _register()
    assert run("keys", "rotate", "--issuer", "xianyang").exit_code == 0
    out_file = city / "psam.json"
    result = run("terminal", "psam", "--terminal-id", TERMINAL, "--out", str(out_file))
    assert result.exit_code == 0, result.output
    image = PsamImage.load(out_file)
    store = _store()
    assert sorted(k.key_version for k in image.issuers) == [1, 2]
    for iid, mpk, mamk, version, alg in store.psam_keys_all_versions([XIANYANG]):
        keys = image.keys_for(iid, version)
        assert keys is not None and (keys.mpk, keys.mamk, keys.alg_id) == (mpk, mamk, alg)
    assert "key version(s) 1, 2" in result.output
    for key in _master_hex(store):
        assert key not in result.output.lower()


def _signed(record: TapRecord, store: KeyStore) -> TapRecord:
    """The record with the TAC the card would have made (its DTK from the city's key store)."""
    moment = dt.datetime.fromisoformat(record.tx_time).astimezone(SHANGHAI_TZ)
    tac = crypto.purchase_tac(
        store.dtk(record.issuer_id, record.card_asn, record.key_version), record.amount_fen, record.tx_type,
        bytes.fromhex(record.terminal_id), record.terminal_seq, bytes.fromhex(moment.strftime("%Y%m%d")),
        bytes.fromhex(moment.strftime("%H%M%S")), record.alg_id,
    )  # fmt: skip
    return msgspec.structs.replace(record, tac=tac.hex())


def test_a_new_psam_continues_the_terminal_sequence_clearing_already_holds(city: Path) -> None:
    """The TTC is the record's terminal_seq: restarting at 1 would make every new tap a duplicate."""
    _register()
    asn = "71200000000000000001"
    result = run(
        "card", "issue", "--type", "ordinary", "--asn", asn, "--balance-fen", "5000", "--out", str(city / "c.json")
    )
    assert result.exit_code == 0, result.output
    store = _store()
    bus, card = Terminal(TERMINAL, seq=41), Card(0, balance_fen=5000, asn_hex=asn, issuer_id=XIANYANG)
    when = dt.datetime.now(SHANGHAI_TZ) - dt.timedelta(minutes=5)
    records = [_signed(bus.tap(card, 200, when, signed=False), store) for _ in range(2)]  # seqs 41, 42
    engine = db.make_engine(get_settings().database_url)
    try:
        ingest = make_ingestor(engine).ingest(
            prepare(TERMINAL, bus.batch(records), TacKeys(keystore_dtk(store), store.issuers()))
        )
        codes = [v["code"] for v in msgspec.json.decode(ingest.answer)["verdicts"]]
        assert "E_TAC_MISMATCH" not in codes and len(codes) == 2  # authentic: both stored, seqs claimed
    finally:
        engine.dispose()
    out_file = city / "psam.json"
    result = run("terminal", "psam", "--terminal-id", TERMINAL, "--out", str(out_file))
    assert result.exit_code == 0, result.output
    assert PsamImage.load(out_file).ttc_next == 43 and "continues at 43" in result.output
    # replacing an image that had gone further keeps its sequence too
    image = PsamImage.load(out_file)
    image.ttc_next = 500
    image.save(out_file)
    result = run("terminal", "psam", "--terminal-id", TERMINAL, "--out", str(out_file), "--force")
    assert result.exit_code == 0, result.output
    assert PsamImage.load(out_file).ttc_next == 500
    # another terminal's PSAM starts afresh
    _register("0a0000000002")
    other = city / "psam-2.json"
    assert run("terminal", "psam", "--terminal-id", "0a0000000002", "--out", str(other)).exit_code == 0
    assert PsamImage.load(other).ttc_next == 1
