"""Card image: JSON round trip, atomic persistence across reloads, strict refusal, personalisation.

card-profile.md, "Card image"; docs/card-image.md is the schema.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cardkit import (
    HOLDER,
    Terminal,
    auth_material,
    card_keys,
    make_card,
    make_image,
    management_info,
    public_info,
    transit_record,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from cardos import crypto
from cardos.card import Card
from cardos.image import SCHEMA_VERSION, CardImage, CardKeys, ImageError, ProveEntry, PurseState
from cardos.personalise import AuthMaterial, PersonaliseError, personalise
from cardos.profile import PURSE_MAX_FEN, CardType

DOC = Path(__file__).parents[2] / "docs" / "card-image.md"


def used_image() -> CardImage:
    """A social security card after purchases, a composite purchase, a load and a bad PIN."""
    card = make_card(card_type=CardType.SOCIAL_SECURITY)
    terminal = Terminal(card, card.keys)
    assert terminal.purchase(120).ok
    assert terminal.purchase(200, capp=True, record=transit_record(200, 9_680)).ok
    assert terminal.load(5_000).ok
    terminal.select_auth()
    card.transmit(bytes.fromhex("0020000106") + b"000000")
    return card.image


def test_round_trip_of_a_used_image() -> None:
    image = used_image()
    assert image.prove and image.load_prove and image.log_records and image.transit_records
    assert image.auth is not None and image.auth.pin_tries_left == 2
    assert CardImage.from_json(image.to_json()) == image
    assert json.loads(image.to_json())["schema_version"] == SCHEMA_VERSION == 2


def test_a_version_1_image_without_load_proofs_loads_and_is_written_as_version_2(tmp_path: Path) -> None:
    """Images written before loads were provable keep working (docs/card-image.md, "Versions")."""
    d = doc(used_image())
    d["schema_version"] = 1
    del d["load_prove"]
    path = tmp_path / "card.json"
    path.write_text(json.dumps(d))
    card = Card.load(path)
    assert card.image.load_prove == () and card.image.prove  # purchases' proofs kept
    assert card.image == dataclasses.replace(CardImage.from_dict(d), load_prove=())
    card.power_on()
    terminal = Terminal(card, card.keys)
    tx = terminal.load(100)
    assert tx.ok and tx.counter is not None
    written = json.loads(path.read_text())
    assert written["schema_version"] == 2 and len(written["load_prove"]) == 1
    assert Card.load(path).image.load_prove == card.image.load_prove
    # a version 2 image may leave load_prove out too: none
    d["schema_version"] = 2
    assert CardImage.from_dict(d).load_prove == ()


@settings(max_examples=50, deadline=None)
@given(
    balance=st.integers(0, PURSE_MAX_FEN),
    online=st.integers(0, 0xFFFF),
    offline=st.integers(0, 0xFFFF),
    blocked=st.booleans(),
    alg=st.sampled_from([crypto.ALG_3DES, crypto.ALG_SM4]),
    key_version=st.integers(0, 255),
    logs=st.lists(st.binary(min_size=23, max_size=23), max_size=10),
    transits=st.lists(st.binary(min_size=48, max_size=48), max_size=30),
    proves=st.lists(
        st.builds(
            ProveEntry,
            st.sampled_from([6, 9]),
            st.integers(1, 0xFFFF),
            st.binary(min_size=4, max_size=4),
            st.binary(min_size=4, max_size=4),
        ),
        max_size=8,
    ),
    load_proves=st.lists(
        st.builds(
            ProveEntry,
            st.just(2),
            st.integers(1, 0xFFFF),
            st.binary(min_size=4, max_size=4),
            st.binary(min_size=4, max_size=4),
        ),
        max_size=8,
    ),
)
def test_round_trip_of_any_valid_image(
    balance: int,
    online: int,
    offline: int,
    blocked: bool,
    alg: int,
    key_version: int,
    logs: list[bytes],
    transits: list[bytes],
    proves: list[ProveEntry],
    load_proves: list[ProveEntry],
) -> None:
    image = dataclasses.replace(
        make_image(alg_id=alg),
        keys=card_keys(alg, key_version),
        purse=PurseState(balance, online, offline, blocked),
        log_records=tuple(logs),
        transit_records=tuple(transits),
        prove=tuple(proves),
        load_prove=tuple(load_proves),
    )
    again = CardImage.from_json(image.to_json())
    assert again == image
    assert Card(again).image == image


def test_card_persists_every_commit_and_reloads_to_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    make_card(card_type=CardType.SOCIAL_SECURITY).image.save_atomic(path)
    card = Card.load(path)
    card.power_on()
    terminal = Terminal(card, card.keys)
    tx = terminal.purchase(300, capp=True, record=transit_record(300, 9_700))
    assert tx.ok and tx.counter is not None
    assert CardImage.load(path) == card.image
    load = terminal.load(1_000)
    assert load.ok and load.counter == 0
    assert CardImage.load(path) == card.image
    reloaded = Card.load(path)
    assert reloaded.image == card.image
    assert (reloaded.balance_fen, reloaded.offline_counter, reloaded.online_counter) == (10_700, 1, 1)
    # the reloaded card still proves the purchase and carries on
    reloaded.power_on()
    t2 = Terminal(reloaded, reloaded.keys)
    t2.select_purse()
    assert t2.prove(0x09, tx.counter + 1) == (tx.mac2 + tx.tac, 0x9000)
    assert t2.prove(0x02, load.counter + 1) == (load.mac2 + load.tac, 0x9000)  # and the load
    assert t2.load_tac_verifies(load, t2.prove(0x02, 1)[0][4:])
    assert t2.purchase(100).ok
    assert Card.load(path).balance_fen == 10_600
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]  # no temp files left


def test_refused_commands_and_reads_do_not_rewrite_the_image(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    make_card().image.save_atomic(path)
    card = Card.load(path)
    card.power_on()
    stamp = path.stat().st_mtime_ns
    terminal = Terminal(card, card.keys)
    terminal.select_purse()
    assert terminal.purchase(100, bad_mac1=True).sw == 0x9302
    card.transmit(bytes.fromhex("00B095001E"))
    assert path.stat().st_mtime_ns == stamp


def test_a_card_without_a_path_never_serialises(monkeypatch: pytest.MonkeyPatch) -> None:
    card = make_card()

    def boom(self: CardImage) -> str:
        raise AssertionError("serialised without a path")

    monkeypatch.setattr(CardImage, "to_json", boom)
    terminal = Terminal(card, card.keys)
    assert terminal.purchase(1, capp=True, record=transit_record(1, 9_999)).ok
    assert terminal.load(1).ok


def doc(image: CardImage | None = None) -> dict[str, Any]:
    return json.loads((image or make_image()).to_json())


def load_entry(**fields: object) -> dict[str, object]:
    """One ``load_prove`` entry of a JSON image, valid unless ``fields`` spoil it."""
    return {"tx_type": 2, "counter": 1, "mac2": "00" * 4, "tac": "00" * 4} | fields


@pytest.mark.parametrize("version", [0, 3, "1", "2", 1.0, 2.0, None, True])
def test_unknown_schema_versions_are_refused(version: object) -> None:
    d = doc()
    d["schema_version"] = version
    with pytest.raises(ImageError, match="schema_version"):
        CardImage.from_dict(d)
    del d["schema_version"]
    with pytest.raises(ImageError, match="schema_version"):
        CardImage.from_dict(d)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.pop("files"), "files"),
        (lambda d: d["files"].pop("15"), "files.15"),
        (lambda d: d["files"].update({"15": "zz"}), "files.15"),
        (lambda d: d["files"].update({"17": "00" * 59}), "0x17"),
        (lambda d: d["files"].update({"16": "00" * 54}), "0x16"),
        (lambda d: d["files"].update({"18": ["00" * 22]}), "log records"),
        (lambda d: d["files"].update({"18": ["00" * 23]} | {"18": ["00" * 23] * 11}), "log records"),
        (lambda d: d["files"].update({"1E": "00" * 48}), "files.1E"),
        (lambda d: d["purse"].update({"balance_fen": PURSE_MAX_FEN + 1}), "balance"),
        (lambda d: d["purse"].update({"balance_fen": -1}), "balance"),
        (lambda d: d["purse"].update({"balance_fen": 1.5}), "purse.balance_fen"),
        (lambda d: d["purse"].update({"offline_counter": 0x10000}), "offline_counter"),
        (lambda d: d["purse"].update({"alg_id": 7}), "algorithm"),
        (lambda d: d["purse"].update({"blocked": "no"}), "purse.blocked"),
        (lambda d: d["keys"].update({"dpk": "00" * 8}), "dpk"),
        (lambda d: d["keys"].pop("damk"), "keys.damk"),
        (lambda d: d.update({"prove": [{"tx_type": 2, "counter": 1, "mac2": "00" * 4, "tac": "00" * 4}]}), "prove"),
        (lambda d: d.update({"prove": {}}), "prove"),
        (lambda d: d.update({"load_prove": [load_entry(tx_type=6)]}), "load_prove"),
        (lambda d: d.update({"load_prove": [load_entry(counter=0)]}), "counter"),
        (lambda d: d.update({"load_prove": [load_entry(mac2="00" * 3)]}), "MAC2"),
        (lambda d: d.update({"load_prove": [load_entry(mac2="zz" * 4)]}), "load_prove[].mac2"),
        (lambda d: d.update({"load_prove": [load_entry()] * 9}), "load_prove"),
        (lambda d: d.update({"load_prove": "00"}), "load_prove"),
        (lambda d: d.update({"auth": {"pin": "12345"}}), "auth"),
        (lambda d: d.update({"auth": []}), "auth"),
    ],
)
def test_malformed_images_are_refused_with_the_field_named(mutate: Any, field: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(ImageError, match=re.escape(field)) as info:
        CardImage.from_dict(d)
    assert str(info.value).startswith("E_CARD_IMAGE: ")


def test_not_json_and_not_an_object_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not JSON"):
        CardImage.from_json("{")
    with pytest.raises(ImageError, match="object"):
        CardImage.from_json("[]")
    path = tmp_path / "card.json"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ImageError):
        CardImage.load(path)


def test_save_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    first, second = make_image(balance_fen=1), make_image(balance_fen=2)
    first.save_atomic(path)
    second.save_atomic(path)
    assert CardImage.load(path) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_every_json_field_is_documented() -> None:
    text = DOC.read_text()
    assert f"schema version {SCHEMA_VERSION}" in text.lower()

    def keys(value: object) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    for key in keys(doc(used_image())):
        assert f"`{key}`" in text, f"docs/card-image.md does not document {key!r}"


def test_keys_are_not_in_reprs() -> None:
    keys = card_keys()
    assert keys.dpk.hex() not in repr(keys) and keys.dpk.hex().upper() not in repr(keys)
    assert auth_material().pin not in repr(auth_material())


# --- personalisation -----------------------------------------------------------------------------


def test_personalise_is_pure_and_makes_a_fresh_card() -> None:
    a, b = make_image(balance_fen=3_000), make_image(balance_fen=3_000)
    assert a == b
    assert a.purse == PurseState(3_000, 0, 0, False)
    assert a.log_records == a.transit_records == a.prove == a.load_prove == ()
    assert a.holder is None and a.auth is None
    ss = make_image(card_type=CardType.SOCIAL_SECURITY)
    assert ss.holder == HOLDER and ss.auth is not None and ss.auth.pin_tries_left == 3


def test_personalise_refuses_inconsistent_inputs() -> None:
    keys = card_keys()
    ss = CardType.SOCIAL_SECURITY
    with pytest.raises(PersonaliseError, match="card type"):
        personalise(keys=keys, public=public_info(ss), management=management_info())
    with pytest.raises(PersonaliseError, match="social security"):
        personalise(keys=keys, public=public_info(ss), management=management_info(ss), holder=HOLDER)
    with pytest.raises(PersonaliseError, match="0x16"):
        personalise(keys=keys, public=public_info(), management=management_info(), holder=HOLDER[:-1])
    with pytest.raises(PersonaliseError, match="balance"):
        personalise(keys=keys, public=public_info(), management=management_info(), balance_fen=PURSE_MAX_FEN + 1)
    good = auth_material()
    for bad in (
        AuthMaterial(good.private_key_pem, good.certificate_der, "12345"),
        AuthMaterial(good.private_key_pem, good.certificate_der[:-1], good.pin),
        AuthMaterial(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", good.certificate_der, good.pin),
        AuthMaterial(auth_material("654321").private_key_pem, good.certificate_der, good.pin),
    ):
        with pytest.raises(PersonaliseError):
            personalise(keys=keys, public=public_info(), management=management_info(), auth=bad)


def test_card_keys_are_checked() -> None:
    with pytest.raises(ImageError, match="dtk"):
        CardKeys(bytes(16), bytes(16), bytes(15), bytes(16), 1, crypto.ALG_3DES)
    with pytest.raises(ImageError, match="algorithm"):
        CardKeys(bytes(16), bytes(16), bytes(16), bytes(16), 1, 0x02)
