"""The demo city: keys, cards, two buses, a morning's taps, upload and clearing.

Everything runs through the real parts: the key store issues cards from its master keys,
each bus's PSAM holds the purchase keys of Xianyang and Xi'an, every tap is the validator
flow of ``terminals.session`` against the card OS (through pcscd + vpcd for bus 1 when a
pcscd with the vpcd readers is running, in-process otherwise), and the journals are
uploaded over HTTP to the clearing API, which verifies every TAC and posts the ledger.

The ride is seeded (``--seed``) so that the same seed gives the same taps. Times are the
last hour before now, because clearing refuses taps from the future (``E_BAD_TIME``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cardos.card import Card
from cardos.image import CardImage
from cardos.os import SmartCard, TearPlan
from cardos.personalise import personalise
from cardos.profile import CITY_CODES, ISSUER_XIAN, ISSUER_XIANYANG, CardType
from cardos.psam import Psam, psam_image_for_terminal
from cardos.records import SHANGHAI_TZ, ManagementInfo, PublicInfo
from clearing import denylist as clearing_denylist
from clearing.business_day import clock_from_settings
from clearing.db import ensure_migrated, session_factory, transaction
from clearing.errors import ClearingError
from clearing.issuance import issue_card
from clearing.keystore import KeyStore
from clearing.ledger import trial_balance
from clearing.models import Card as CardRow
from clearing.registry import ensure_issuers, ensure_operator, register_terminal
from fares import Tariff, load_example_tariff
from settlement.bank import BankAccount
from settlement.close import CloseResult
from settlement.parties import list_payees, set_account
from terminals.config import TerminalConfig, UploadConfig
from terminals.denylist import Denylist
from terminals.journal import Journal
from terminals.readers import InProcessReader, Reader
from terminals.session import Outcome, TapResult
from terminals.uploader import Uploader
from terminals.validator import TariffFare, Terminal
from yikatong.settings import Settings

OPERATOR = "xianyang-bus"
# the demo operator's payout account (example digits; the CNAPS code has a bank's shape only)
DEMO_OPERATOR_ACCOUNT = BankAccount("Xianyang Public Transport Co", "6222020000000000101", "102791000021")
PCSC_CARD_READER = "Virtual PCD 00 00"
PCSC_PSAM_READER = "Virtual PCD 00 01"


@dataclass
class DemoCard:
    label: str
    card: Card
    image_path: Path
    card_type: CardType
    issuer_id: bytes

    @property
    def asn(self) -> str:
        return PublicInfo.decode(self.card.image.public).asn.hex()


@dataclass
class Bus:
    name: str
    route_id: str
    stops: list[str]
    terminal_id: str
    terminal: Terminal
    journal_path: Path
    token: str
    via: str  # "pcscd + vpcd" or "in-process"
    insert: contextlib.AbstractContextManager[None] | None = None


@dataclass
class TapLine:
    time: dt.datetime
    bus: str
    stop: str
    card: str
    result: TapResult
    via: str


@dataclass
class DemoReport:
    taps: list[TapLine] = field(default_factory=list)
    verdicts: dict[str, int] = field(default_factory=dict)
    balances: list[tuple[str, str, int, int | None]] = field(default_factory=list)  # label, asn, purse, shadow
    trial_balance_ok: bool = False
    clearing_url: str = ""
    workdir: Path = Path()
    database_url: str = ""
    closes: list[CloseResult] = field(default_factory=list)  # the ended days the demo closed


# --- setting up the city -----------------------------------------------------------------


def open_keystore(settings: Settings) -> KeyStore:
    """The key store, with Xianyang's and Xi'an's master keys created on first use.

    One demo machine plays both issuers: in production Xi'an's keys live only in Xi'an. The
    demo builds its own city, so it creates the store as ``yikatong init`` does.
    """
    keystore = KeyStore.from_settings(settings, create=True)
    missing = [issuer for issuer in (ISSUER_XIANYANG, ISSUER_XIAN) if not keystore.has_issuer(issuer)]
    if missing:
        keystore.init(missing)
    return keystore


CARD_PLAN: tuple[tuple[str, CardType, int], ...] = (
    ("Wang (ordinary)", CardType.ORDINARY, 5_000),
    ("Li (ordinary)", CardType.ORDINARY, 1_200),
    ("Zhang (student)", CardType.STUDENT, 3_000),
    ("Liu (senior)", CardType.SENIOR, 2_000),
    ("Chen (social security)", CardType.SOCIAL_SECURITY, 8_000),
)


def issue_demo_cards(
    factory: sessionmaker[Session], keystore: KeyStore, cards_dir: Path, now: dt.datetime
) -> list[DemoCard]:
    cards_dir.mkdir(parents=True, exist_ok=True)
    out: list[DemoCard] = []
    with transaction(factory) as session:
        for label, card_type, balance_fen in CARD_PLAN:
            pin = "123456" if card_type is CardType.SOCIAL_SECURITY else None
            image, _row = issue_card(
                session,
                keystore,
                issuer_id=ISSUER_XIANYANG.hex(),
                card_type=card_type,
                balance_fen=balance_fen,
                pin=pin,
                now=now,
            )
            out.append(_save(label, image, cards_dir, card_type, ISSUER_XIANYANG))
    out.append(_save("Zhao (Xi'an card)", xian_card(keystore, now), cards_dir, CardType.ORDINARY, ISSUER_XIAN))
    return out


XIAN_CARD_BALANCE_FEN = 4_000  # the Xi'an card's opening balance (``yikatong.live_interop`` registers it in Xi'an)


def xian_card(keystore: KeyStore, now: dt.datetime) -> CardImage:
    """A card issued by Xi'an (its own keys): Xianyang never registers it, only acquires its taps."""
    asn = bytes.fromhex("7100") + _serial()  # city code + 16-digit serial, as Xianyang's ASNs
    public = PublicInfo(
        ISSUER_XIAN, 0x01, 0x01, asn, now.date(), now.date().replace(year=now.year + 10), CardType.ORDINARY
    )
    management = ManagementInfo(b"\x00\x00\x01\x56", b"\x61\x00", CITY_CODES["xian"], True, CardType.ORDINARY)
    return personalise(
        keys=keystore.card_keys(ISSUER_XIAN, asn),
        public=public,
        management=management,
        balance_fen=XIAN_CARD_BALANCE_FEN,
    )


def _serial() -> bytes:
    """8 random BCD bytes: each demo run gets a fresh Xi'an card, even twice in one second."""
    return bytes.fromhex(f"{secrets.randbelow(10**16):016d}")


def _save(label: str, image: CardImage, cards_dir: Path, card_type: CardType, issuer: bytes) -> DemoCard:
    path = cards_dir / f"{PublicInfo.decode(image.public).asn.hex()}.json"
    image.save_atomic(path)
    return DemoCard(label, Card.load(path), path, card_type, issuer)


def pcsc_available() -> bool:
    """pcscd is running and lists both vpcd slots (the demo does not start system daemons)."""
    try:
        from terminals.readers import pcsc_reader_names

        names = pcsc_reader_names()
    except Exception:  # noqa: BLE001 - no pyscard, no pcscd: the in-process path is the answer
        return False
    return PCSC_CARD_READER in names and PCSC_PSAM_READER in names


def make_bus(
    name: str,
    route_id: str,
    stops: list[str],
    terminal_number: str,
    factory: sessionmaker[Session],
    keystore: KeyStore,
    tariff: Tariff,
    workdir: Path,
    *,
    use_pcsc: bool,
) -> Bus:
    with transaction(factory) as session:
        ensure_operator(session, OPERATOR, name="Xianyang Public Transport Co. (demo)")
        token = register_terminal(session, terminal_number, OPERATOR, route_id, replace_token=True)
        if not any(p.payee_id == OPERATOR and p.account is not None for p in list_payees(session)):
            set_account(session, OPERATOR, DEMO_OPERATOR_ACCOUNT, actor="demo")
    psam_path = workdir / f"psam-{terminal_number}.json"
    if not psam_path.exists():
        image = psam_image_for_terminal(
            bytes.fromhex(terminal_number),
            bytes.fromhex("0000000000" + terminal_number[-10:]),
            keystore.psam_keys([ISSUER_XIANYANG, ISSUER_XIAN]),
        )
        image.save(psam_path)
    psam = Psam.from_file(psam_path)
    journal_path = workdir / f"journal-{terminal_number}.db"
    config = TerminalConfig(
        route_id=route_id,
        stop_id=stops[0],
        vehicle_id=name,
        line_code=tariff.route_codes[route_id],
        station_code=tariff.stop_codes[stops[0]],
        operator_code=1,
    )
    insert: contextlib.AbstractContextManager[None] | None = None
    card_reader: Reader
    sam_reader: Reader
    if use_pcsc:
        from cardos.vpcd import PORT_PSAM, VpcdClient
        from terminals.readers import PcscReader

        psam_handle = VpcdClient(psam, port=PORT_PSAM).serve_in_thread()
        psam_handle.wait_powered()
        insert = _stopping(psam_handle)
        card_reader = PcscReader(PCSC_CARD_READER, monitor=False)
        sam_reader = PcscReader(PCSC_PSAM_READER, monitor=False)
        via = "pcscd + vpcd"
    else:
        card_reader = InProcessReader(f"{name} card")
        sam_reader = InProcessReader(f"{name} PSAM", psam)
        via = "in-process"
    terminal = Terminal(
        card_reader=card_reader,
        sam_reader=sam_reader,
        journal=Journal(journal_path),
        denylist=Denylist(journal_path),
        config=config,
        pricer=TariffFare(tariff),
    )
    return Bus(name, route_id, stops, terminal_number, terminal, journal_path, token, via, insert)


@contextlib.contextmanager
def _stopping(handle: object) -> Iterator[None]:
    try:
        yield
    finally:
        handle.stop()  # type: ignore[attr-defined]


# --- riding -----------------------------------------------------------------------------


class PulledAfterDebit:
    """The card leaves the field just after it committed DEBIT: the debit happened, its answer is lost.

    The worst moment for a validator (``card-profile.md``, "Atomicity and tear"): only GET
    TRANSACTION PROVE on the next presentation can tell it that the fare was paid.
    """

    def __init__(self, card: Card) -> None:
        self.card = card

    def power_on(self) -> bytes:
        return self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()

    def transmit(self, apdu: bytes) -> bytes:
        if len(apdu) > 1 and apdu[1] == 0x54:
            self.card.tear = TearPlan(self.card.apdu_index + 1, "after_commit")
        return self.card.transmit(apdu)


def present(bus: Bus, card: SmartCard, now: dt.datetime) -> TapResult:
    """The rider holds the card to the validator: one tap."""
    if bus.via == "in-process":
        reader = bus.terminal.card_reader
        assert isinstance(reader, InProcessReader)
        reader.insert(card)
        try:
            return bus.terminal.tap(now)
        finally:
            reader.remove()
    return _present_pcsc(bus, card, now)


def _present_pcsc(bus: Bus, card: SmartCard, now: dt.datetime) -> TapResult:
    from cardos.vpcd import PORT_CARD, VpcdClient

    handle = VpcdClient(card, port=PORT_CARD).serve_in_thread()
    try:
        handle.wait_powered()
        result = bus.terminal.tap(now)
        for _ in range(20):  # pcscd may not have seen the insertion yet: nothing was done
            if result.outcome not in (Outcome.TAP_AGAIN, Outcome.READER_ERROR) or result.record is not None:
                break
            time.sleep(0.05)
            result = bus.terminal.tap(now)
        return result
    finally:
        handle.stop()
        handle.wait_ended()
        time.sleep(0.25)  # let pcscd see the card leave before the next one arrives


def _at_stop(bus: Bus, tariff: Tariff, stop: str) -> None:
    bus.terminal.config = dataclasses.replace(bus.terminal.config, stop_id=stop, station_code=tariff.stop_codes[stop])


RIDE_SPAN: Final = dt.timedelta(hours=1)  # a morning's rides take at most about 50 minutes


def ride_start(now: dt.datetime, day_start: dt.datetime) -> tuple[dt.datetime, float]:
    """When today's rides start, and how much their gaps are squeezed, so they are all today and past.

    An hour ago, unless today began less than an hour ago (a demo started just after midnight):
    then from a minute after the day began, the gaps between taps shortened to fit (pure).
    """
    start = now - RIDE_SPAN
    if start >= day_start:
        return start, 1.0
    room = now - day_start - dt.timedelta(minutes=1)
    if room <= dt.timedelta(minutes=2):  # the first minutes of the day: the rides stay in yesterday
        return start, 1.0
    return day_start + dt.timedelta(minutes=1), room / RIDE_SPAN


def ride(
    buses: dict[str, Bus], cards: list[DemoCard], tariff: Tariff, rng: random.Random, start: dt.datetime,
    squeeze: float = 1.0,
) -> list[TapLine]:  # fmt: skip
    """A morning: riders board bus 1 along its stops; some transfer to bus 6; incidents on the way.

    ``squeeze`` (0..1] shortens the minutes between riders (``ride_start``); the seconds of a
    repeated tap are the fare rules' and stay as they are.
    """
    lines: list[TapLine] = []
    bus1, bus6 = buses["1"], buses["6"]
    riders = list(cards)
    rng.shuffle(riders)
    clock = start

    def tap(bus: Bus, who: DemoCard, *, pulled_after_debit: bool = False) -> TapResult:
        card: SmartCard = PulledAfterDebit(who.card) if pulled_after_debit else who.card
        result = present(bus, card, clock)
        lines.append(TapLine(clock, bus.name, bus.terminal.config.stop_id or "", who.label, result, bus.via))
        return result

    for index, who in enumerate(riders):
        stop = bus1.stops[index % len(bus1.stops)]
        _at_stop(bus1, tariff, stop)
        clock += dt.timedelta(minutes=rng.randint(2, 4)) * squeeze
        if index == 1:
            tap(bus1, who, pulled_after_debit=True)  # pulled away mid-tap: the validator says tap again
            clock += dt.timedelta(seconds=5)
            tap(bus1, who)  # the next presentation proves the debit: recorded, not charged twice
        else:
            tap(bus1, who)
        if index == 0:
            clock += dt.timedelta(seconds=20)
            tap(bus1, who)  # a nervous second tap within the repeat window: not charged
    # two riders change to bus 6 within the transfer window
    for who in riders[:2]:
        _at_stop(bus6, tariff, bus6.stops[0])
        clock += dt.timedelta(minutes=rng.randint(5, 12)) * squeeze
        tap(bus6, who)
    return lines


def report_lost_and_tap(
    factory: sessionmaker[Session], bus: Bus, uploader: Uploader, who: DemoCard, clock: dt.datetime
) -> TapLine:
    """The holder reports the card lost; the bus pulls the denylist; the card's next tap blocks it."""
    with transaction(factory) as session:
        clearing_denylist.add(session, who.issuer_id.hex(), who.asn, "lost", clock)
    uploader.pull_denylist(bus.terminal_id)
    result = present(bus, who.card, clock)
    return TapLine(clock, bus.name, bus.terminal.config.stop_id or "", who.label, result, bus.via)


# --- clearing -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def clearing_server(settings: Settings, port: int) -> Iterator[str]:
    """The clearing API under uvicorn in a thread, as terminals meet it over HTTP."""
    import uvicorn

    from yikatong.app import create_app

    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="clearing-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the clearing API did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


def run_demo(settings: Settings, *, seed: int, workdir: Path, use_pcsc: bool | None = None) -> DemoReport:
    """Build the demo city and run one morning; returns what happened for display."""
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    now = dt.datetime.now(SHANGHAI_TZ).replace(microsecond=0)
    days = clock_from_settings(settings)
    day_start = dt.datetime.combine(days.day_of(now), days.cutoff, SHANGHAI_TZ)
    start, squeeze = ride_start(now, day_start)
    engine = ensure_migrated(settings.database_url)
    factory = session_factory(engine)
    keystore = open_keystore(settings)
    with transaction(factory) as session:
        ensure_issuers(session, own_city=settings.city)
    tariff = load_example_tariff()
    cards = issue_demo_cards(factory, keystore, workdir / "cards", start - dt.timedelta(days=2))
    pcsc = pcsc_available() if use_pcsc is None else use_pcsc
    urban = ["u_railway_station", "u_bus_station", "u_city_hall", "u_university", "u_hospital"]
    buses = {
        "1": make_bus("bus 1", "1", urban, "712000000101", factory, keystore, tariff, workdir, use_pcsc=pcsc),
        "6": make_bus("bus 6", "6", urban[2:], "712000000601", factory, keystore, tariff, workdir, use_pcsc=False),
    }
    report = DemoReport(workdir=workdir, database_url=settings.database_url)
    try:
        port = free_port()
        with clearing_server(settings, port) as url:
            report.clearing_url = url
            # yesterday's morning too, uploaded at the depot overnight, so the city has a day that has
            # ended: the close settles it below
            for morning, today in ((start - dt.timedelta(days=1), False), (start, True)):
                report.taps += ride(buses, cards, tariff, rng, morning, squeeze)
                for bus in buses.values():
                    _upload(bus, url, report, lost_card=_lost_card(cards) if today and bus.name == "bus 6" else None,
                            factory=factory, now=now)  # fmt: skip
    finally:
        for bus in buses.values():
            if bus.insert is not None:
                bus.insert.__exit__(None, None, None)
            bus.terminal.journal.close()
            bus.terminal.denylist.close()
    with factory() as session:
        for demo_card in cards:
            row = session.query(CardRow).filter_by(card_asn=demo_card.asn).one_or_none()
            shadow = None if row is None else row.shadow_balance_fen
            report.balances.append((demo_card.label, demo_card.asn, demo_card.card.balance_fen, shadow))
        try:
            trial_balance(session)
            report.trial_balance_ok = True
        except ClearingError:
            report.trial_balance_ok = False
    report.closes = close_ended_days(settings, engine, now)
    return report


def _lost_card(cards: list[DemoCard]) -> DemoCard:
    return next(c for c in cards if c.card_type is CardType.ORDINARY and c.issuer_id == ISSUER_XIANYANG)


def _upload(
    bus: Bus,
    url: str,
    report: DemoReport,
    *,
    lost_card: DemoCard | None,
    factory: sessionmaker[Session],
    now: dt.datetime,
) -> None:
    """Upload a bus's journal; with ``lost_card``, that card is reported lost and tapped first."""
    uploader = Uploader(bus.terminal.journal, UploadConfig(url, bus.token), denylist=bus.terminal.denylist)
    try:
        if lost_card is not None:
            report.taps.append(report_lost_and_tap(factory, bus, uploader, lost_card, now - dt.timedelta(minutes=1)))
        answer = uploader.upload_pending()
        for verdict, count in answer.verdicts.items():
            report.verdicts[verdict] = report.verdicts.get(verdict, 0) + count
    finally:
        uploader.close()


def close_ended_days(settings: Settings, engine: Engine, now: dt.datetime) -> list[CloseResult]:
    """The nightly close as ``serve`` runs it, without the grace: every ended day, in order."""
    from settlement.schedule import ScheduledClose
    from yikatong.commands.settle import payer_of
    from yikatong.fare_lookup import fare_lookup_of

    closes = ScheduledClose(
        engine=engine, payer=payer_of(settings), out_dir=settings.settlement_dir,
        clock=clock_from_settings(settings), grace=dt.timedelta(0), fares=fare_lookup_of(settings),
    )  # fmt: skip
    return closes.run(now)
