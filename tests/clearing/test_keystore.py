"""Key store: encryption at rest, KEK handling, versions and rotation, cache, ceremony import, CA."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cardos.crypto import ALG_3DES, ALG_SM4, derive_card_key
from cardos.profile import ISSUER_XIAN, ISSUER_XIANYANG
from clearing.errors import ClearingError
from clearing.keystore import KEY_NAMES, KeyStore, load_or_create_dev_kek, read_ca_certificates

KEK = bytes(range(32))
OTHER_KEK = bytes(range(1, 33))
ASN = bytes.fromhex("71200000000000000001")
XY = ISSUER_XIANYANG.hex()


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    ks = KeyStore.open(tmp_path / "keystore.json", KEK)
    ks.init(["xianyang", "xian"])
    return ks


def _masters(ks: KeyStore, issuer_hex: str = XY, version: int = 1) -> dict[str, bytes]:
    return {name: ks._master(issuer_hex, version, name) for name in KEY_NAMES}


def test_file_holds_no_key_material_in_clear(store: KeyStore) -> None:
    text = store.path.read_text().lower()
    for issuer_hex in (XY, ISSUER_XIAN.hex()):
        for key in _masters(store, issuer_hex).values():
            assert key.hex() not in text
    assert "private key" not in text and "begin ec private" not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_reopened_store_derives_the_same_card_keys(store: KeyStore) -> None:
    masters = _masters(store)
    again = KeyStore.open(store.path, KEK)
    keys = again.card_keys(XY, ASN, 1)
    assert keys.dpk == derive_card_key(masters["mpk"], ISSUER_XIANYANG, ASN, ALG_3DES)
    assert keys.dlk == derive_card_key(masters["mlk"], ISSUER_XIANYANG, ASN, ALG_3DES)
    assert keys.dtk == derive_card_key(masters["mtk"], ISSUER_XIANYANG, ASN, ALG_3DES)
    assert keys.damk == derive_card_key(masters["mamk"], ISSUER_XIANYANG, ASN, ALG_3DES)
    assert (keys.key_version, keys.alg_id) == (1, ALG_3DES)
    assert again.dtk(ISSUER_XIANYANG, ASN, 1) == keys.dtk == again.dtk(XY, ASN.hex(), 1)


def test_wrong_kek_fails_clearly(store: KeyStore) -> None:
    with pytest.raises(ClearingError) as info:
        KeyStore.open(store.path, OTHER_KEK)
    assert info.value.code == "E_KEK_MISMATCH"
    assert "wrong" in str(info.value)


def test_a_ciphertext_moved_to_another_slot_does_not_decrypt(store: KeyStore) -> None:
    doc = json.loads(store.path.read_text())
    keys = doc["issuers"][XY]["versions"]["1"]["keys"]
    keys["mpk"], keys["mtk"] = keys["mtk"], keys["mpk"]
    store.path.write_text(json.dumps(doc))
    tampered = KeyStore.open(store.path, KEK)
    with pytest.raises(ClearingError) as info:
        tampered.dtk(XY, ASN, 1)
    assert info.value.code == "E_KEY_DECRYPT"


def test_init_refuses_to_overwrite_existing_keys(store: KeyStore) -> None:
    before = store.path.read_bytes()
    with pytest.raises(ClearingError) as info:
        store.init(["xianyang"])
    assert info.value.code == "E_KEYS_EXIST"
    assert store.path.read_bytes() == before


def test_rotation_adds_a_version_and_keeps_the_old_one(store: KeyStore) -> None:
    old_dtk = store.dtk(XY, ASN, 1)
    reader = KeyStore.open(store.path, KEK)  # a long-running process that loaded v1 only
    assert store.rotate("xianyang") == 2
    assert store.current_version(XY) == 2
    assert store.card_keys(XY, ASN).key_version == 2
    assert store.dtk(XY, ASN, 2) != old_dtk
    assert store.dtk(XY, ASN, 1) == old_dtk
    # the other process picks the new version up on first use, without a restart
    assert reader.dtk(XY, ASN, 2) == store.dtk(XY, ASN, 2)
    assert reader.versions(XY) == [1, 2]


def test_unknown_version_and_issuer_are_clear_errors(store: KeyStore) -> None:
    with pytest.raises(ClearingError, match="E_UNKNOWN_KEY_VERSION"):
        store.dtk(XY, ASN, 9)
    with pytest.raises(ClearingError, match="E_UNKNOWN_ISSUER"):
        store.dtk("0102030405060708", ASN, 1)


def test_card_key_cache_hits_and_stays_bounded(tmp_path: Path) -> None:
    ks = KeyStore.open(tmp_path / "ks.json", KEK, cache_size=3)
    ks.init(["xianyang"])
    first = ks.dtk(XY, ASN, 1)
    assert (ks.cache_hits, ks.cache_misses) == (0, 1)
    assert ks.dtk(XY, ASN, 1) == first
    assert (ks.cache_hits, ks.cache_misses) == (1, 1)
    for n in range(2, 8):
        ks.dtk(XY, ASN[:-1] + bytes([n]), 1)
    assert ks._masters.cache_len() == 3
    assert ks.dtk(XY, ASN, 1) == first  # evicted, derived again, same value
    assert ks.cache_misses == 8


def test_ceremony_import_roundtrip_skip_and_conflict(tmp_path: Path) -> None:
    entry = {
        "issuer_id": XY, "alg_id": ALG_SM4, "key_version": 3,
        "mpk": "11" * 16, "mlk": "22" * 16, "mtk": "33" * 16, "mamk": "44" * 16,
    }  # fmt: skip
    peer = {"issuer_id": ISSUER_XIAN.hex(), "alg_id": 0, "key_version": 1, "mpk": "55" * 16, "mamk": "66" * 16}
    file = tmp_path / "ceremony.json"
    file.write_text(json.dumps({"issuers": [entry, peer]}))
    ks = KeyStore.open(tmp_path / "ks.json", KEK)
    assert ks.import_ceremony(file) == [(XY, 3), (ISSUER_XIAN.hex(), 1)]
    assert ks.dtk(XY, ASN, 3) == derive_card_key(bytes.fromhex("33" * 16), ISSUER_XIANYANG, ASN, ALG_SM4)
    assert ks.ca_certificate(XY) is not None
    assert "33" * 16 not in ks.path.read_text()
    assert ks.import_ceremony(file) == []  # same keys again: nothing new
    # a peer issuer's TAC key never came here
    with pytest.raises(ClearingError, match="E_KEY_MISSING"):
        ks.dtk(ISSUER_XIAN, ASN, 1)
    entry["mtk"] = "77" * 16
    file.write_text(json.dumps({"issuers": [entry]}))
    before = ks.path.read_bytes()
    with pytest.raises(ClearingError, match="E_KEYS_EXIST"):
        ks.import_ceremony(file)
    assert ks.path.read_bytes() == before


def test_bad_ceremony_values_are_refused_without_echoing_them(tmp_path: Path) -> None:
    secret = "ab" * 15 + "zz"
    file = tmp_path / "ceremony.json"
    file.write_text(json.dumps({"issuers": [{"issuer_id": XY, "alg_id": 0, "key_version": 1, "mpk": secret}]}))
    ks = KeyStore.open(tmp_path / "ks.json", KEK)
    with pytest.raises(ClearingError) as info:
        ks.import_ceremony(file)
    assert info.value.code == "E_CEREMONY_FORMAT"
    assert secret not in str(info.value) and "ab" * 15 not in str(info.value)
    assert not ks.path.exists()


def test_psam_export_gives_purchase_and_maintenance_keys_only(store: KeyStore) -> None:
    masters = _masters(store)
    exported = store.psam_keys(["xianyang", ISSUER_XIAN])
    assert exported[ISSUER_XIANYANG] == (masters["mpk"], masters["mamk"], 1, ALG_3DES)
    assert set(exported) == {ISSUER_XIANYANG, ISSUER_XIAN}
    store.rotate(XY)
    assert [v[3] for v in store.psam_keys_all_versions([XY])] == [1, 2]


def test_issuer_ca_signs_card_certificates(store: KeyStore) -> None:
    card_key = ec.generate_private_key(ec.SECP256R1())
    cert = store.sign_card_certificate(XY, card_key.public_key(), ASN.hex())
    ca = store.ca_certificate(XY)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    assert ASN.hex() in cert.subject.rfc4514_string()
    # CA certificates are public: readable without the KEK
    assert read_ca_certificates(store.path)[XY] == ca
    # and the CA key survives a reopen (decrypted lazily)
    again = KeyStore.open(store.path, KEK)
    again.sign_card_certificate(XY, card_key.public_key(), ASN.hex()).verify_directly_issued_by(ca)


def test_dev_kek_file_is_created_0600_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    ks_path = tmp_path / "var" / "keystore.json"
    kek = load_or_create_dev_kek(ks_path)
    kek_file = ks_path.with_name("keystore.json.kek")
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    assert load_or_create_dev_kek(ks_path) == kek
    os.chmod(kek_file, 0o644)
    with pytest.raises(ClearingError, match="E_KEK_PERMISSIONS"):
        load_or_create_dev_kek(ks_path)


def test_processes_creating_the_dev_kek_at_once_all_get_the_same_one(tmp_path: Path) -> None:
    ks_path = tmp_path / "var" / "keystore.json"
    script = (
        "import sys, time; from pathlib import Path; from clearing.keystore import load_or_create_dev_kek\n"
        "while not Path(sys.argv[2]).exists(): time.sleep(0.001)\n"
        "print(load_or_create_dev_kek(Path(sys.argv[1])).hex())\n"
    )
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(ks_path), str(go)],
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    time.sleep(1.0)
    go.touch()
    results = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _out, err in results]
    keks = {out.strip() for out, _err in results}
    assert keks == {load_or_create_dev_kek(ks_path).hex()}
    assert [p.name for p in ks_path.parent.iterdir()] == ["keystore.json.kek"]  # no temporary files left


def test_master_keys_never_appear_in_logs_output_repr_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    ks = KeyStore.open(tmp_path / "ks.json", KEK)
    ks.init(["xianyang"])
    ks.rotate(XY)
    texts: list[str] = []
    keys = ks.card_keys(XY, ASN)
    texts += [repr(ks), str(ks), repr(keys), str(keys), repr(ks.list_versions())]
    for bad in (lambda: ks.dtk(XY, ASN, 7), lambda: ks.init([XY]), lambda: KeyStore.open(ks.path, OTHER_KEK)):
        with pytest.raises(ClearingError) as info:
            bad()
        texts.append(str(info.value))
        texts.append(repr(info.value))
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    blob = "\n".join(texts).lower()
    for version in (1, 2):
        for key in _masters(ks, XY, version).values():
            assert key.hex() not in blob
    assert keys.dtk.hex() not in blob  # diversified card keys are not shown either


def test_a_stale_store_object_keeps_what_another_one_wrote(tmp_path: Path) -> None:
    """Each change re-reads the file under the lock: an object loaded earlier does not write its old view back."""
    first = KeyStore.open(tmp_path / "ks.json", KEK)
    second = KeyStore.open(tmp_path / "ks.json", KEK)  # loaded before first's writes
    first.init(["xianyang"])
    second.init(["xian"])
    assert first.rotate(XY) == 2
    assert second.rotate(XY) == 3  # not a second version 2
    again = KeyStore.open(tmp_path / "ks.json", KEK)
    assert again.issuers() == sorted([XY, ISSUER_XIAN.hex()])
    assert again.versions(XY) == [1, 2, 3]
    assert again.ca_certificate(ISSUER_XIAN) is not None and again.ca_certificate(XY) is not None
    assert stat.S_IMODE((tmp_path / "ks.json.lock").stat().st_mode) == 0o600


# One racer per process: waits for the start file, then runs its operation ``n`` times, opening
# the store afresh each time as a CLI invocation does (load, change, replace the file).
_RACER = """
import sys, time
from pathlib import Path
from clearing.keystore import KeyStore

path, kek, op, arg, n, go = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.001)
for i in range(int(n)):
    store = KeyStore.open(path, bytes.fromhex(kek))
    if op == "rotate":
        store.rotate(arg)
    elif op == "init":
        store.init([f"{arg}{i:04x}"])
    elif op == "import":
        entry = {"issuer_id": f"{arg}{i:04x}", "alg_id": 0, "key_version": 1, "mpk": f"{i:02x}" * 16}
        store.import_ceremony({"issuers": [entry]})
    else:
        raise SystemExit(f"unknown op {op}")
"""


def test_processes_changing_the_store_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ks.json"
    KeyStore.open(path, KEK).init(["xianyang", "xian", "0100720fffffff00"])
    go = tmp_path / "go"
    n = 12
    racers = [
        ("rotate", XY),  # two issuers rotated side by side ...
        ("rotate", ISSUER_XIAN.hex()),
        ("rotate", "0100720fffffff00"),  # ... and one issuer rotated by two processes
        ("rotate", "0100720fffffff00"),
        ("init", "0100aaaaffff"),  # new issuers with keys and a CA
        ("import", "0100bbbbffff"),  # ceremony imports, each with a new CA
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(path), KEK.hex(), op, arg, str(n), str(go)],
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for op, arg in racers
    ]
    time.sleep(1.0)  # let every racer import and wait at the start line
    go.touch()
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    store = KeyStore.open(path, KEK)
    assert store.versions(XY) == list(range(1, n + 2))
    assert store.versions(ISSUER_XIAN) == list(range(1, n + 2))
    assert store.versions("0100720fffffff00") == list(range(1, 2 * n + 2))
    created = [f"0100aaaaffff{i:04x}" for i in range(n)] + [f"0100bbbbffff{i:04x}" for i in range(n)]
    assert set(created) <= set(store.issuers())
    cas = read_ca_certificates(path)
    assert all(issuer in cas for issuer in created)
    # and every version written by any racer still decrypts
    for issuer in store.issuers():
        for version in store.versions(issuer):
            store.dpk(issuer, ASN, version)
