"""Two real Yikatong instances for the two-instance tests: Xianyang and Xi'an, each a uvicorn process.

Each city gets its own directory (key store with its issuer keys under its own KEK, the
interop signing key, a TLS certificate for 127.0.0.1 from a test CA generated here with
``cryptography.x509``) and its own database: a PostgreSQL schema, or a SQLite file. The
processes are started as the server is (``uvicorn --factory yikatong.app:app_from_environment``)
with ``YIKATONG_CITY`` and the rest in the environment; Xianyang runs the exchange on a short
schedule and reaches Xi'an through ``Relay``, a TCP relay on loopback that can play a peer
that is down or an acknowledgement lost on the way back (TLS stays end to end through it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from cardos import crypto
from cardos.profile import ISSUERS
from cardos.records import SHANGHAI_TZ
from clearing import db, registry
from clearing.contract import Batch, FareInfo, TapRecord, encode
from clearing.keystore import KeyStore, load_or_create_dev_kek
from interop_xian.keys import SigningKeys, import_peer_keys, signing_file_path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
XIAN_ISSUER = ISSUERS["xian"].hex()
XIANYANG_ISSUER = ISSUERS["xianyang"].hex()
TERMINAL = "0a0000000001"
OPERATOR = "xianyang-bus"
REQUEST_BYTES_MIN = 1500  # more than a TLS handshake's client bytes, less than a batch request's


# --- a test CA -----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Yikatong interop test CA"))
        .issuer_name(_name("Yikatong interop test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = out / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_server_cert(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path], out: Path, cn: str
) -> tuple[Path, Path]:
    ca_key, ca_cert, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_path, cert_path = out / f"{cn}.key", out / f"{cn}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a relay that can fail -------------------------------------------------------------------


class Relay:
    """127.0.0.1:port → 127.0.0.1:upstream, byte for byte; ``down`` refuses, ``drop_responses`` loses answers."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.down = False
        self.drop_responses = 0
        self.dropped = 0
        # With ``drop_responses``: what tells that the peer has stored its answer (then the line is cut).
        self.answered: Callable[[], bool] | None = None
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream))
        except OSError:
            client.close()
            return
        sent = 0  # bytes of the client so far: past the TLS handshake, a request is on its way
        swallowing = False
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.1)
                if swallowing and self.answered is not None and self.answered():
                    self.dropped += 1  # the peer has stored its answer, which never reaches the client
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is server:
                        if sent > REQUEST_BYTES_MIN and self.drop_responses and not swallowing:
                            self.drop_responses -= 1
                            swallowing = True
                        if not swallowing:
                            client.sendall(data)
                    else:
                        sent += len(data)
                        server.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop = True
        self._sock.close()


# --- a city --------------------------------------------------------------------------------


@dataclass
class Instance:
    city: str
    home: Path
    database_url: str
    engine: Engine
    port: int
    env: dict[str, str]
    keystore: KeyStore
    signing: SigningKeys
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, cert: tuple[Path, Path], *, wait_s: float = 60.0) -> None:
        key_path, cert_path = cert
        self.log_path = self.home / "server.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "uvicorn", "--factory", "yikatong.app:app_from_environment", "--host", "127.0.0.1",
             "--port", str(self.port), "--ssl-keyfile", str(key_path), "--ssl-certfile", str(cert_path),
             "--log-level", "info"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + wait_s
        ca = self.env["YIKATONG_INTEROP_CA_FILE"]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.city} server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/openapi.json", verify=ca, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.city} server did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "yikatong"), *args], cwd=self.home, env=self.env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"yikatong {' '.join(args)} failed: {done.stdout}\n{done.stderr}")
        return done

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def make_instance(city: str, home: Path, database_url: str, engine: Engine, ca_path: Path, **env: str) -> Instance:
    """A city's directory: key store with its issuer keys, a signing key, the database registered."""
    home.mkdir(parents=True, exist_ok=True)
    keystore_path = home / "keystore.json"
    kek = load_or_create_dev_kek(keystore_path)
    keystore = KeyStore.open(keystore_path, kek)
    keystore.init([city])
    signing = SigningKeys(signing_file_path(keystore_path), kek, city)
    signing.rotate(now=dt.datetime.now(dt.UTC), overlap=dt.timedelta(days=7))
    with Session(engine) as session, session.begin():
        registry.ensure_issuers(session, own_city=city)
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("YIKATONG_")},
        "YIKATONG_CITY": city,
        "YIKATONG_DATABASE_URL": database_url,
        "YIKATONG_KEYSTORE": str(keystore_path),
        "YIKATONG_INTEROP_CA_FILE": str(ca_path),
        "YIKATONG_SETTLEMENT_DIR": str(home / "settlement"),
        "YIKATONG_PORTAL_CARD_IMAGES": str(home / "cards"),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return Instance(city, home, database_url, engine, free_port(), environment, keystore, signing)


def exchange_keys(a: Instance, b: Instance) -> None:
    """Each side imports the other's public keys (out of band, as `interop keys export|import` do)."""
    now = dt.datetime.now(dt.UTC)
    for here, there in ((a, b), (b, a)):
        with Session(here.engine) as session, session.begin():
            import_peer_keys(session, there.signing.export(now=now), own_city=here.city, now=now,
                             overlap=dt.timedelta(days=7))  # fmt: skip


# --- cards and taps ------------------------------------------------------------------------


@dataclass
class XianCard:
    asn: str
    key_version: int
    alg_id: int
    balance_fen: int
    counter: int = 0


def issue_xian_cards(xian: Instance, n: int, balance_fen: int) -> list[XianCard]:
    """Xi'an issues its cards (registered in Xi'an's database, opening balance sold)."""
    from clearing.issuance import issue_card

    cards = []
    with Session(xian.engine) as session, session.begin():
        for _ in range(n):
            issued_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
            _, row = issue_card(session, xian.keystore, issuer_id="xian", card_type="ordinary",
                                balance_fen=balance_fen, now=issued_at)  # fmt: skip
            cards.append(XianCard(row.card_asn, row.key_version, row.alg_id, balance_fen))
    return cards


@dataclass
class XianyangTerminal:
    terminal_id: str
    token: str
    seq: int = 1
    batch_seq: int = 1


def register_terminal(xianyang: Instance) -> XianyangTerminal:
    with Session(xianyang.engine) as session, session.begin():
        registry.ensure_operator(session, OPERATOR)
        token = registry.register_terminal(session, TERMINAL, OPERATOR)
    return XianyangTerminal(TERMINAL, token)


def tap(term: XianyangTerminal, card: XianCard, amount_fen: int, when: dt.datetime, xian_keystore: KeyStore,
        *, forge: bool = False) -> TapRecord:  # fmt: skip
    """What a Xianyang validator records for a Xi'an card: the TAC the card computed with Xi'an's key."""
    moment = when.astimezone(SHANGHAI_TZ)
    record = TapRecord(
        terminal_id=term.terminal_id, terminal_seq=term.seq, psam_serial="0000000000000001", issuer_id=XIAN_ISSUER,
        card_asn=card.asn, card_type="ordinary", tx_type=9, amount_fen=amount_fen, balance_before_fen=card.balance_fen,
        offline_counter=card.counter, tx_time=moment.isoformat(timespec="seconds"), key_version=card.key_version,
        alg_id=card.alg_id, tac="00000000", route_id="R1", stop_id="S1", vehicle_id="V1",
        fare=FareInfo("p1", "adult", None, amount_fen, 0, None), status="normal",
    )  # fmt: skip
    dtk = xian_keystore.dtk(XIAN_ISSUER, card.asn, card.key_version)
    tac = crypto.purchase_tac(dtk, amount_fen, 9, bytes.fromhex(term.terminal_id), term.seq,
                              bytes.fromhex(moment.strftime("%Y%m%d")), bytes.fromhex(moment.strftime("%H%M%S")),
                              card.alg_id)  # fmt: skip
    import msgspec

    term.seq += 1
    if forge:
        return msgspec.structs.replace(record, tac="%08x" % (int(tac.hex(), 16) ^ 1))
    card.balance_fen -= amount_fen
    card.counter += 1
    return msgspec.structs.replace(record, tac=tac.hex())


def upload(xianyang: Instance, term: XianyangTerminal, records: Sequence[TapRecord]) -> dict[str, Any]:
    batch = Batch(term.batch_seq, dt.datetime.now(SHANGHAI_TZ).isoformat(timespec="seconds"), list(records))
    term.batch_seq += 1
    answer = httpx.post(
        f"{xianyang.url}/v1/terminals/{term.terminal_id}/batches", content=encode(batch),
        headers={"Authorization": f"Bearer {term.token}", "Content-Type": "application/json"},
        verify=xianyang.env["YIKATONG_INTEROP_CA_FILE"], timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def wait_for(what: str, check: Callable[[], bool], *, timeout_s: float = 60.0, every_s: float = 0.25,
             logs: Sequence[Instance] = ()) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every_s)
    tails = "\n".join(f"--- {i.city} ---\n{i.log_text()[-4000:]}" for i in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def pg_url_with_schema(url: str, schema: str) -> str:
    return f"{url}?options=-csearch_path%3D{schema}"


@dataclass
class Cities:
    xianyang: Instance
    xian: Instance
    relay: Relay
    terminal: XianyangTerminal
    cards: list[XianCard]
    ca_path: Path

    def instances(self) -> list[Instance]:
        return [self.xianyang, self.xian]


def start_cities(
    home: Path, databases: dict[str, tuple[str, Engine]], *, both_ways: bool = False, env: dict[str, str] | None = None
) -> Iterator[Cities]:
    """Both cities up (Xi'an first), keys exchanged, Xi'an cards issued, a Xianyang terminal; stopped after.

    ``both_ways``: Xi'an runs the exchange too (straight to Xianyang, no relay), for its window
    digests and dispute moves; ``env`` is added to both cities' environment.
    """
    env = env or {}
    ca = make_ca(home)
    certs = {c: make_server_cert(ca, home, c) for c in ("xianyang", "xian")}
    xian = make_instance("xian", home / "xian", *databases["xian"], ca[2], YIKATONG_INTEROP_EXCHANGE_INTERVAL_S="0")
    xian.env.update(env)
    relay = Relay(xian.port)
    xianyang = make_instance(
        "xianyang", home / "xianyang", *databases["xianyang"], ca[2],
        YIKATONG_PEER_URL=f"https://127.0.0.1:{relay.port}", YIKATONG_INTEROP_EXCHANGE_INTERVAL_S="0.5",
        YIKATONG_INTEROP_RETRY_BASE_S="0.3", YIKATONG_INTEROP_RETRY_MAX_S="1", YIKATONG_INTEROP_TIMEOUT_S="5",
    )  # fmt: skip
    xianyang.env.update(env)
    if both_ways:
        xian.env.update(
            YIKATONG_PEER_URL=f"https://127.0.0.1:{xianyang.port}", YIKATONG_INTEROP_EXCHANGE_INTERVAL_S="0.5",
            YIKATONG_INTEROP_RETRY_BASE_S="0.3", YIKATONG_INTEROP_RETRY_MAX_S="1",
        )  # fmt: skip
    exchange_keys(xianyang, xian)
    cards = issue_xian_cards(xian, 3, 20_000)
    terminal = register_terminal(xianyang)
    try:
        xian.start(certs["xian"])
        xianyang.start(certs["xianyang"])
        yield Cities(xianyang, xian, relay, terminal, cards, ca[2])
    finally:
        for instance in (xianyang, xian):
            instance.stop()
        relay.close()


def cities_on(
    param: str, pg_url: str, home: Path, *, prefix: str, both_ways: bool = False, env: dict[str, str] | None = None
) -> Iterator[Cities]:
    """Both cities on two PostgreSQL schemas (``postgres+postgres``) or Xi'an on SQLite (``postgres+sqlite``)."""
    schemas = []
    databases = {}
    for city in ("xianyang", "xian"):
        if city == "xian" and param.endswith("sqlite"):
            url = f"sqlite:///{home / 'xian.db'}"
            engine = db.ensure_migrated(url)
        else:
            schema = db.random_schema_name(f"{prefix}{city[:4]}_")
            db.create_schema(pg_url, schema)
            db.upgrade(pg_url, schema=schema)
            schemas.append(schema)
            url = pg_url_with_schema(pg_url, schema)
            engine = db.make_engine(pg_url, schema=schema)
        databases[city] = (url, engine)
    try:
        yield from start_cities(home, databases, both_ways=both_ways, env=env)
    finally:
        for _, engine in databases.values():
            engine.dispose()
        for schema in schemas:
            db.drop_schema(pg_url, schema)


def reset_schema(url: str, schema: str) -> None:
    db.create_schema(url, schema)
    db.upgrade(url, schema=schema)


__all__ = [
    "OPERATOR",
    "XIANYANG_ISSUER",
    "XIAN_ISSUER",
    "Cities",
    "Instance",
    "Relay",
    "cities_on",
    "pg_url_with_schema",
    "reset_schema",
    "start_cities",
    "tap",
    "upload",
    "wait_for",
]
