"""``make run``'s second city: Xi'an, a Yikatong of its own beside the demo's Xianyang (issue 12).

The demo rides a Xi'an card on Xianyang's buses; Xianyang's clearing forwards its taps
(``I_FORWARDED_INTEROP``). To show them judged where they belong, ``yikatong demo --serve``
runs Xi'an as a child process, set up as an operator would set up a second city:

* its own directory ``<workdir>/xian``: a SQLite database, a key store under its own dev KEK,
  its interop signing key, its settlement files and its server log;
* **Xi'an's master keys only** (all versions, by key ceremony: ``KeyStore.import_ceremony``),
  so it can verify the TACs of Xi'an's cards and of nothing else. The demo's key store is
  where they come from: one demo machine plays Xi'an's card factory (``yikatong.demo.xian_card``
  personalises the card, the bus PSAMs carry Xi'an's purchase keys);
* **the demo's Xi'an card registered as Xi'an's own card** (``clearing.issuance.issue_card``
  with the card's ASN and opening balance, in Xi'an's database; the image it makes is the
  same card's and is not kept: the demo's card image is the card);
* **the interop keys exchanged** as ``yikatong interop keys export`` / ``import`` do
  (``SigningKeys.export``, ``import_peer_keys``), and the peer URLs set both ways;
* the exchange on a short schedule (``EXCHANGE_INTERVAL_S``) on both sides, so the morning's
  forwarded taps reach Xi'an seconds after start.

The two servers talk plain HTTP on 127.0.0.1, which ``interop_xian.sender.check_peer_url``
allows for the loopback address only (the bytes never leave the machine); batches and
acknowledgements are signed and checked exactly as between two real cities.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cardos.profile import ISSUER_XIAN, CardType
from clearing.db import ensure_migrated
from clearing.issuance import issue_card
from clearing.keys.kek import load_or_create_dev_kek
from clearing.keys.master_keys import KEY_NAMES
from clearing.keystore import KeyStore
from clearing.registry import ensure_issuers, get_card
from interop_xian.keys import SigningKeys, import_peer_keys, signing_file_path

CITY: Final = "xian"
EXCHANGE_INTERVAL_S: Final = 5.0
START_TIMEOUT_S: Final = 60.0
KEY_OVERLAP: Final = dt.timedelta(days=7)  # interop_xian.config.InteropSettings.key_overlap_s's default
# The demo's exchange knobs (``interop_xian.config.InteropSettings``), on both sides: a round every
# few seconds, and a short backoff, so a start-up race costs seconds, not minutes.
EXCHANGE_ENVIRONMENT: Final = {
    "YIKATONG_INTEROP_EXCHANGE_INTERVAL_S": f"{EXCHANGE_INTERVAL_S:g}",
    "YIKATONG_INTEROP_RETRY_BASE_S": "1",
    "YIKATONG_INTEROP_RETRY_MAX_S": "10",
}


@dataclass(frozen=True)
class XianCity:
    """Where the demo's Xi'an runs, for the summary."""

    url: str
    home: Path
    database_url: str
    keystore: Path
    log_path: Path
    card_asn: str

    def environment(self) -> dict[str, str]:
        """The ``YIKATONG_*`` that make a ``yikatong`` command talk to this Xi'an."""
        return {
            "YIKATONG_CITY": CITY,
            "YIKATONG_DATABASE_URL": self.database_url,
            "YIKATONG_KEYSTORE": str(self.keystore),
            "YIKATONG_SETTLEMENT_DIR": str(self.home / "settlement"),
            "YIKATONG_PORTAL_CARD_IMAGES": str(self.home / "cards"),
        }

    def command_prefix(self) -> str:
        """``YIKATONG_CITY=xian …`` to put before a ``yikatong`` command in the summary."""
        env = self.environment()
        return " ".join(f"{k}={env[k]}" for k in ("YIKATONG_CITY", "YIKATONG_DATABASE_URL", "YIKATONG_KEYSTORE"))


def exchange_settings_into_environment() -> None:
    """The demo's exchange knobs for the in-process Xianyang server (an operator's own values win)."""
    for name, value in EXCHANGE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def hand_over_xian_keys(source: KeyStore, xian: KeyStore) -> list[tuple[str, int]]:
    """The demo's key ceremony: Xi'an's master keys, every version, from the demo's store into Xi'an's.

    In production Xi'an generates them and nobody else holds its TAC and load keys; the demo
    made them in its own store to personalise the Xi'an card. The document stays in memory.
    """
    issuer = ISSUER_XIAN.hex()
    entries = [
        {
            "issuer_id": issuer,
            "alg_id": source.alg_id(issuer, version),
            "key_version": version,
            # the one read of clear master keys: the ceremony document, in memory only
            **{name: source._master(issuer, version, name).hex() for name in KEY_NAMES},
        }
        for version in source.versions(issuer)
    ]
    return xian.import_ceremony({"issuers": entries})


def register_xian_card(engine: Engine, keystore: KeyStore, asn: str, opening_fen: int, issued_at: dt.datetime) -> None:
    """The demo's Xi'an card as Xi'an's own card: registered with its opening balance sold (once)."""
    with Session(engine) as session, session.begin():
        ensure_issuers(session, own_city=CITY)
        if get_card(session, ISSUER_XIAN.hex(), asn) is None:
            issue_card(session, keystore, issuer_id=ISSUER_XIAN.hex(), card_type=CardType.ORDINARY, asn=asn,
                       balance_fen=opening_fen, now=issued_at)  # fmt: skip


def signing_keys(path: Path, kek: bytes, city: str, now: dt.datetime) -> SigningKeys:
    """A city's interop signing keys, with a first key made if it has none (``interop keys rotate``)."""
    keys = SigningKeys(path, kek, city)
    if not keys.keys():
        keys.rotate(now=now, overlap=KEY_OVERLAP)
    return keys


def import_keys(engine: Engine, document: Mapping[str, object], *, own_city: str, now: dt.datetime) -> None:
    """``yikatong interop keys import`` of the peer's export, into this city's database."""
    with Session(engine) as session, session.begin():
        import_peer_keys(session, document, own_city=own_city, now=now, overlap=KEY_OVERLAP)


@dataclass
class _Prepared:
    city: XianCity
    env: dict[str, str]
    export: dict[str, object]  # Xi'an's public keys, for Xianyang to import
    process: subprocess.Popen[bytes]


def _prepare_and_start(
    workdir: Path, source: KeyStore, xianyang_export: Mapping[str, object], *, card_asn: str, opening_fen: int,
    port: int, xianyang_url: str,
) -> _Prepared:  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    home = (workdir / CITY).resolve()
    home.mkdir(parents=True, exist_ok=True)
    keystore_path = home / "keystore.json"
    kek = load_or_create_dev_kek(keystore_path)
    keystore = KeyStore.open(keystore_path, kek)
    hand_over_xian_keys(source, keystore)
    database_url = f"sqlite:///{home / 'yikatong.db'}"
    engine = ensure_migrated(database_url)
    try:
        register_xian_card(engine, keystore, card_asn, opening_fen, now - dt.timedelta(days=3))
        signing = signing_keys(signing_file_path(keystore_path), kek, CITY, now)
        import_keys(engine, xianyang_export, own_city=CITY, now=now)
    finally:
        engine.dispose()
    city = XianCity(f"http://127.0.0.1:{port}", home, database_url, keystore_path, home / "server.log", card_asn)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("YIKATONG_")},
        **city.environment(),
        **{name: os.environ.get(name, value) for name, value in EXCHANGE_ENVIRONMENT.items()},  # the operator's win
        "YIKATONG_PEER_URL": xianyang_url,
    }
    with city.log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "yikatong.app:app_from_environment", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return _Prepared(city, env, signing.export(now=now), process)


def _wait_answering(prepared: _Prepared) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if prepared.process.poll() is not None:
            code, log = prepared.process.returncode, prepared.city.log_path
            raise RuntimeError(f"the Xi'an server exited with {code}; see {log}")
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{prepared.city.url}/interop/v1/batches", timeout=1)  # any answer: it is up (405)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Xi'an server did not answer on {prepared.city.url} within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def xian_card_asn(balances: list[tuple[str, str, int, int | None]]) -> str:
    """The demo's Xi'an card in ``DemoReport.balances``: the one card Xianyang keeps no shadow of."""
    return next(asn for _label, asn, _purse, shadow in balances if shadow is None)


class XianInstance:
    """Xi'an being set up and started in the background (``start``), ready after ``wait``; ``stop`` ends it."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-xian")
        self._future: concurrent.futures.Future[_Prepared] | None = None

    def start(
        self, workdir: Path, source: KeyStore, xianyang: SigningKeys, *, card_asn: str, opening_fen: int, port: int,
        xianyang_url: str,
    ) -> XianInstance:  # fmt: skip
        """Set Xi'an up and start its server in a thread, while the demo starts its own parts."""
        now = dt.datetime.now(dt.UTC)
        if not xianyang.keys():  # Xianyang's first signing key (``interop keys rotate``)
            xianyang.rotate(now=now, overlap=KEY_OVERLAP)
        export = xianyang.export(now=now)  # ``interop keys export``, handed to Xi'an
        self._future = self._pool.submit(
            _prepare_and_start, workdir, source, export, card_asn=card_asn, opening_fen=opening_fen, port=port,
            xianyang_url=xianyang_url,
        )  # fmt: skip
        return self

    def wait(self, xianyang_database_url: str) -> XianCity:
        """Xi'an answering, and its public keys imported into Xianyang's database (``interop keys import``)."""
        assert self._future is not None, "start first"
        prepared = self._future.result()
        _wait_answering(prepared)
        engine = ensure_migrated(xianyang_database_url)
        try:
            import_keys(engine, prepared.export, own_city="xianyang", now=dt.datetime.now(dt.UTC))
        finally:
            engine.dispose()
        return prepared.city

    def stop(self) -> None:
        if self._future is None:
            return
        with contextlib.suppress(Exception):  # a set-up that failed has no process to stop
            _stop(self._future.result().process)
        self._pool.shutdown(wait=True)


__all__ = [
    "EXCHANGE_INTERVAL_S",
    "XianCity",
    "XianInstance",
    "exchange_settings_into_environment",
    "hand_over_xian_keys",
    "register_xian_card",
    "xian_card_asn",
]
