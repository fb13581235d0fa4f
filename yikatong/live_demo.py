"""``make run``: the demo city kept alive, with the portal, a payment server and a bus that keeps tapping.

``yikatong demo --serve`` first builds the city and rides one morning (``yikatong.demo``),
then this module keeps it running for a newcomer to look at:

* **localstripe** (PyPI), the Stripe-compatible payment server, as a child process on
  ``payments_port``, with its webhooks pointed at the portal's ``/webhooks/payments`` and
  signed with the portal's first webhook secret;
* **the portal** beside the clearing API in one uvicorn server (``yikatong.app``), with the
  portal's pages and ``/api`` turned on, cookies without ``Secure`` (plain http on this
  machine) and the test-mode payment step (``portal_payments_test_mode``) standing in for
  Stripe.js;
* **a demo citizen** with a password login and the social-security demo card bound to the
  account; the card image is on disk, so ``yikatong card emulate`` can put it on the vpcd
  reader for the reader page, and its PIN is printed;
* **bus 1 keeps tapping**: every few seconds one of the other demo cards rides a stop, and
  the validator uploads its journal and pulls the denylist, as a real bus does;
* **Xi'an** as a second Yikatong in a child process (``yikatong.live_interop``, started by
  ``yikatong.commands.demo.serve_live``), judging the Xi'an card's forwarded taps.

Nothing here is a fake: it is the same code a city runs, on SQLite.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cardos.card import Card
from cardos.profile import ISSUER_XIANYANG
from cardos.records import SHANGHAI_TZ
from clearing.db import ensure_migrated, session_factory, transaction
from clearing.keystore import KeyStore
from fares import load_example_tariff
from portal.accounts import AccountService
from portal.errors import PortalError
from portal.identity import check_char
from portal.models import PortalCardBinding, PortalCitizen
from terminals.config import UploadConfig
from terminals.uploader import Uploader
from yikatong.demo import Bus, DemoReport, _at_stop, make_bus, present
from yikatong.settings import Settings

DEMO_MOBILE = "13800138000"
DEMO_PASSWORD = "xianyang demo"  # noqa: S105 - the demo citizen's published password
DEMO_NAME = "陈明"
DEMO_ID_NUMBER_17 = "61040219900101123"
SOCIAL_CARD_LABEL = "Chen (social security)"  # yikatong.demo.CARD_PLAN
DEMO_CARD_PIN = "123456"  # yikatong.demo issues the social-security card with this PIN
WEBHOOK_EVENTS = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.refunded",
    "refund.created",
    "refund.updated",
)
TAP_INTERVAL_S = 8.0
UPLOAD_EVERY_TAPS = 3
START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class LiveCity:
    """What ``make run`` prints: where to look and how to log in."""

    portal_url: str
    payments_url: str
    citizen_mobile: str
    citizen_password: str
    card_asn: str
    card_image: Path
    card_pin: str
    staff: tuple[tuple[str, str, str], ...] = ()  # (username, role, TOTP provisioning URI) of the demo staff


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM as Ctrl-C, so the child server and the bus line are stopped on the way out."""
    raise KeyboardInterrupt


def live_settings(settings: Settings, *, port: int, payments_port: int) -> Settings:
    """The settings of the served demo: portal on, plain-http cookies, test-mode payments."""
    origin = f"http://127.0.0.1:{port}"
    return settings.model_copy(
        update={
            "portal_enabled": True,
            "portal_dev": True,
            "portal_origin": origin,
            "payments_url": f"http://127.0.0.1:{payments_port}",
            "portal_payments_test_mode": True,
        }
    )


@contextlib.contextmanager
def localstripe(port: int, log_path: Path, key: str) -> Iterator[str]:
    """localstripe as a child process, answered before this yields; stopped after."""
    url = f"http://127.0.0.1:{port}"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"localstripe exited with {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.TransportError):
                    answer = httpx.get(f"{url}/v1/balance", headers={"Authorization": f"Bearer {key}"}, timeout=1)
                    if answer.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"localstripe did not answer on {url} within {START_TIMEOUT_S:.0f} s")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def point_webhooks(payments_url: str, portal_url: str, secret: str) -> None:
    """Tell localstripe to deliver its signed events to the portal (its ``/_config/webhooks`` API)."""
    # the top-ups' endpoint, and the utility bills' (portal.modules.utility_bills.online, issue 13)
    for name, path in (("yikatong_portal", "/webhooks/payments"), ("yikatong_bills", "/webhooks/utility-bills")):
        form = {"url": f"{portal_url}{path}", "secret": secret}
        form.update({f"events[{i}]": event for i, event in enumerate(WEBHOOK_EVENTS)})
        httpx.post(
            f"{payments_url}/_config/webhooks/{name}",
            content=urllib.parse.urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=5,
        ).raise_for_status()


def demo_citizen(accounts: AccountService, factory: sessionmaker[Session], issuer_id: str, card_asn: str) -> None:
    """The demo citizen, registered once, with the demo card bound (the demo's seed, not a proof)."""
    id_number = DEMO_ID_NUMBER_17 + check_char(DEMO_ID_NUMBER_17)
    with contextlib.suppress(PortalError):  # registered by an earlier run on this database
        accounts.register(DEMO_MOBILE, DEMO_PASSWORD, DEMO_NAME, id_number, client_ip="demo")
    with transaction(factory) as session:
        citizen_id = session.scalar(select(PortalCitizen.id).where(PortalCitizen.mobile == DEMO_MOBILE))
        assert citizen_id is not None, "the demo citizen was just registered"
        bound = session.scalar(
            select(PortalCardBinding.id).where(
                PortalCardBinding.issuer_id == issuer_id, PortalCardBinding.card_asn == card_asn
            )
        )
        if bound is None:
            session.add(
                PortalCardBinding(citizen_id=citizen_id, issuer_id=issuer_id, card_asn=card_asn, how="transaction")
            )


class BusLine:
    """Bus 1 keeps riding: a tap every ``interval_s``, an upload and a denylist pull every few taps.

    The bus (its journal and denylist are SQLite files) is built in the line's own thread:
    SQLite connections stay in the thread that opened them.
    """

    def __init__(
        self, make_bus: Callable[[], Bus], riders: list[Path], clearing_url: str, *, interval_s: float, seed: int
    ) -> None:
        self.make_bus = make_bus
        self.riders = riders
        self.clearing_url = clearing_url
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.stop_event = threading.Event()
        self.tariff = load_example_tariff()
        self.taps = 0
        self.thread = threading.Thread(target=self._run, name="demo-bus-line", daemon=True)

    def start(self) -> BusLine:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def _run(self) -> None:
        bus = self.make_bus()
        uploader = Uploader(
            bus.terminal.journal, UploadConfig(self.clearing_url, bus.token), denylist=bus.terminal.denylist
        )
        try:
            while not self.stop_event.wait(self.interval_s):
                try:
                    self.ride_one(bus, uploader)
                except Exception as exc:  # noqa: BLE001 - a demo bus that hiccups keeps riding
                    print(f"demo bus: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                uploader.upload_pending()
            uploader.close()
            bus.terminal.journal.close()
            bus.terminal.denylist.close()

    def ride_one(self, bus: Bus, uploader: Uploader) -> None:
        _at_stop(bus, self.tariff, self.rng.choice(bus.stops))
        card = Card.load(self.rng.choice(self.riders))
        present(bus, card, dt.datetime.now(SHANGHAI_TZ).replace(microsecond=0))
        self.taps += 1
        if self.taps % UPLOAD_EVERY_TAPS == 0:
            uploader.upload_pending()
            uploader.pull_denylist(bus.terminal_id)


def prepare(settings: Settings, report: DemoReport) -> tuple[LiveCity, list[Path]]:
    """The demo citizen (with the morning's social-security card) and the bus line's riders."""
    factory = session_factory(ensure_migrated(settings.database_url))
    from yikatong.app import portal_lookup_key

    accounts = AccountService(sessions=factory, lookup_key=portal_lookup_key(settings))
    cards_dir = report.workdir / "cards"
    asn = next(asn for label, asn, _purse, _shadow in report.balances if label == SOCIAL_CARD_LABEL)
    demo_citizen(accounts, factory, ISSUER_XIANYANG.hex(), asn)
    from portal.modules.permits.demo import seed_demo_permits  # issue 13: the citizen's permit applications

    seed_demo_permits(factory, DEMO_MOBILE)
    from portal.modules.social_security.demo import seed_demo_citizen  # issue 13: the citizen's contributions

    seed_demo_citizen(factory, accounts.lookup_key, DEMO_ID_NUMBER_17 + check_char(DEMO_ID_NUMBER_17))
    from portal.modules.medical.demo import seed_demo_medical  # issue 13: 新农合 enrolment and a claim

    seed_demo_medical(factory, ISSUER_XIANYANG.hex(), asn, DEMO_MOBILE)
    from portal.modules.utility_bills.demo import seed_demo_bills  # issue 13: 3 billers, the citizen's bills

    with transaction(factory) as session:
        seed_demo_bills(session, holder_name=DEMO_NAME, today=dt.datetime.now(SHANGHAI_TZ).date())
    staff = demo_staff(factory, accounts.lookup_key)
    riders = [
        cards_dir / f"{asn}.json"
        for label, asn, _purse, shadow in report.balances
        if label != SOCIAL_CARD_LABEL and shadow is not None  # Xianyang's own cards; Xi'an's is cleared there
    ]
    city = LiveCity(
        portal_url=settings.portal_origin or "",
        payments_url=settings.payments_url,
        citizen_mobile=DEMO_MOBILE,
        citizen_password=DEMO_PASSWORD,
        card_asn=asn,
        card_image=cards_dir / f"{asn}.json",
        card_pin=DEMO_CARD_PIN,
        staff=staff,
    )
    return city, riders


DEMO_STAFF: Final = (("finance.demo", "finance"), ("clerk.demo", "counter_clerk"), ("admin.demo", "administrator"))


def demo_staff(factory: sessionmaker[Session], lookup_key: bytes) -> tuple[tuple[str, str, str], ...]:
    """The demo's staff accounts (password ``DEMO_PASSWORD``), each with a fresh TOTP secret per run:
    the provisioning URI is printed once, as ``yikatong staff add`` prints it."""
    from portal.audit import AuditLog
    from portal.staff import StaffService

    staff = StaffService(sessions=factory, lookup_key=lookup_key, audit=AuditLog(factory))
    made: list[tuple[str, str, str]] = []
    for username, role in DEMO_STAFF:
        try:
            new = staff.add(username, role, DEMO_PASSWORD, actor="demo")
        except PortalError:  # made by an earlier run on this database: a new secret, printed again
            new = staff.reset_totp(username, actor="demo")
        made.append((username, role, new.provisioning_uri))
    return tuple(made)


def bus_line(settings: Settings, workdir: Path, keystore: KeyStore, riders: list[Path], clearing_url: str) -> BusLine:
    urban = ["u_railway_station", "u_bus_station", "u_city_hall", "u_university", "u_hospital"]

    def build() -> Bus:
        factory = session_factory(ensure_migrated(settings.database_url))
        tariff = load_example_tariff()
        return make_bus("bus 1 (live)", "1", urban, "712000000102", factory, keystore, tariff, workdir, use_pcsc=False)

    return BusLine(build, riders, clearing_url, interval_s=TAP_INTERVAL_S, seed=int(time.time()))


__all__ = [
    "DEMO_MOBILE",
    "DEMO_PASSWORD",
    "BusLine",
    "LiveCity",
    "bus_line",
    "interrupt",
    "live_settings",
    "localstripe",
    "point_webhooks",
    "port_free",
    "prepare",
]
