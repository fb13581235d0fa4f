"""Two real instances, Xianyang and Xi'an, over HTTPS on loopback: the channel's faults end to end.

Each city is a uvicorn process with its own database (two PostgreSQL schemas; in the second
run Xi'an is on SQLite) and its own keys; Xianyang's server runs the exchange on its schedule
and reaches Xi'an through a relay that can be down or lose an answer. Xi'an judges with the
issuer's real validation (``interop_xian.issuer``): TACs are the cards', made with Xi'an's keys.
The steps run in order on the same pair of cities (module fixture), as a day would.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from wire_instances import (
    XIAN_ISSUER,
    XIANYANG_ISSUER,
    Cities,
    Instance,
    cities_on,
    tap,
    upload,
    wait_for,
)

from interop_xian import batch as wire
from interop_xian.inbox import REPLAY_HEADER

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", params=["postgres+postgres", "postgres+sqlite"])
def cities(request: pytest.FixtureRequest, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cities]:
    home = tmp_path_factory.mktemp(f"two-{request.param.replace('+', '-')}")
    yield from cities_on(request.param, pg_url, home, prefix="t_two_")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def _due_from(c: Cities) -> int:
    return int(c.xianyang.scalar(
        "SELECT coalesce(sum(debits_posted - credits_posted), 0) FROM accounts WHERE code = 500 AND owner_ref = :r",
        r=f"interop:{XIAN_ISSUER}",
    ))  # fmt: skip


def _due_to(c: Cities) -> int:
    return int(c.xian.scalar(
        "SELECT coalesce(sum(credits_posted - debits_posted), 0) FROM accounts WHERE code = 510 AND owner_ref = :r",
        r=f"interop:{XIANYANG_ISSUER}",
    ))  # fmt: skip


def _positions(c: Cities) -> tuple[dict[str, int], dict[str, int]]:
    """Each side's bilateral position per window: Xianyang's due_from, Xi'an's due_to."""

    def of(instance: Instance, direction: str) -> dict[str, int]:
        with instance.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT window_day, sum(amount_fen) FROM interop_bookings WHERE direction = :d GROUP BY window_day"
                ),
                {"d": direction},
            ).all()
        return {str(day): int(fen) for day, fen in rows}

    return of(c.xianyang, "due_from"), of(c.xian, "due_to")


def _outbox(c: Cities, state: str) -> int:
    return int(c.xianyang.scalar("SELECT count(*) FROM interop_outbox WHERE state = :s", s=state))


def _ride(c: Cities, amounts: list[int], *, forge_last: bool = False) -> None:
    records = [tap(c.terminal, c.cards[n % len(c.cards)], a, _now() + dt.timedelta(seconds=n), c.xian.keystore)
               for n, a in enumerate(amounts)]  # fmt: skip
    if forge_last:
        records.append(tap(c.terminal, c.cards[0], 900, _now() + dt.timedelta(seconds=50), c.xian.keystore,
                           forge=True))  # fmt: skip
    answer = upload(c.xianyang, c.terminal, records)
    assert {v["code"] for v in answer["verdicts"]} == {"I_FORWARDED_INTEROP"}


def _post(c: Cities, body: bytes, key_id: str, signature: str) -> httpx.Response:
    return httpx.post(f"{c.xian.url}/interop/v1/batches", content=body, verify=str(c.ca_path), timeout=30,
                      headers={wire.KEY_ID_HEADER: key_id, wire.SIGNATURE_HEADER: signature})  # fmt: skip


def _stored_batch(c: Cities, sequence: int) -> bytes:
    body = c.xianyang.scalar("SELECT body FROM interop_batches_out WHERE sequence = :s", s=sequence)
    return bytes(body)


def _logs(c: Cities) -> list[Instance]:
    return c.instances()


def test_a_day_of_taps_is_accepted_at_the_issuer_with_equal_and_opposite_positions(cities: Cities) -> None:
    c = cities
    _ride(c, [200, 300, 150, 250], forge_last=True)
    wait_for("the round to settle the five items", lambda: _outbox(c, "accepted") + _outbox(c, "rejected") == 5,
             logs=_logs(c))  # fmt: skip
    assert _outbox(c, "accepted") == 4 and _outbox(c, "rejected") == 1
    assert c.xianyang.scalar("SELECT code FROM interop_outbox WHERE state = 'rejected'") == "E_TAC_MISMATCH"
    assert _due_from(c) == 900 == _due_to(c)
    owed_to_us, we_owe = _positions(c)
    assert owed_to_us == we_owe and sum(owed_to_us.values()) == 900  # equal and opposite, window by window
    assert c.xianyang.scalar("SELECT sum(gross_fen) FROM settlement_totals") == 900
    assert c.xian.scalar("SELECT count(*) FROM interop_batches_in") == 1
    # The forged tap's dispute is opened at Xi'an too (a message of its own, before the next test's faults).
    wait_for("the dispute to reach Xi'an", lambda: c.xian.scalar("SELECT count(*) FROM interop_disputes") == 1,
             logs=_logs(c))  # fmt: skip
    wait_for("its reply to be kept", lambda: c.xianyang.scalar("SELECT state FROM interop_messages_out") == "delivered",
             logs=_logs(c))  # fmt: skip


def test_a_lost_acknowledgement_is_answered_by_the_original_and_judged_once(cities: Cities) -> None:
    c = cities
    c.relay.drop_responses = 1
    c.relay.answered = lambda: c.xian.scalar("SELECT count(*) FROM interop_batches_in") == 2
    _ride(c, [120, 130])
    wait_for("the resend to be acknowledged", lambda: _outbox(c, "accepted") == 6, logs=_logs(c))
    assert c.relay.dropped == 1
    sequence = int(c.xianyang.scalar("SELECT max(sequence) FROM interop_batches_out"))
    attempts = c.xianyang.scalar("SELECT attempts FROM interop_batches_out WHERE sequence = :s", s=sequence)
    assert attempts >= 2
    stored = c.xian.scalar("SELECT ack_body FROM interop_batches_in WHERE sequence = :s", s=sequence)
    got = c.xianyang.scalar("SELECT ack_body FROM interop_batches_out WHERE sequence = :s", s=sequence)
    assert bytes(stored) == bytes(got)
    # Xi'an answered batch 2 twice (the second time from what it stored), and judged it once.
    assert c.xian.log_text().count('"POST /interop/v1/batches HTTP/1.1" 200') == sequence + 1
    assert c.xian.scalar("SELECT count(*) FROM interop_batches_in") == sequence
    assert _due_from(c) == 1150 == _due_to(c)


def test_a_peer_down_is_retried_with_backoff_and_delivered_once_back(cities: Cities) -> None:
    c = cities
    c.relay.down = True
    _ride(c, [310])
    wait_for("failed attempts while the peer is down", lambda: (c.xianyang.scalar(
        "SELECT max(attempts) FROM interop_batches_out WHERE state = 'sent'") or 0) >= 3, logs=_logs(c))  # fmt: skip
    error = c.xianyang.scalar("SELECT last_error FROM interop_batches_out WHERE state = 'sent'")
    assert "E_INTEROP_PEER_UNREACHABLE" in error
    assert _due_from(c) == 1150
    c.relay.down = False
    wait_for("delivery after the peer is back", lambda: _outbox(c, "accepted") == 7, logs=_logs(c))
    assert _due_from(c) == 1460 == _due_to(c)


def test_replayed_tampered_gapped_and_wrongly_signed_batches_at_the_issuer(cities: Cities) -> None:
    c = cities
    body = _stored_batch(c, 1)
    key_id, private = c.xianyang.signing.current()
    signature = wire.sign("batch", body, private)
    replay = _post(c, body, key_id, signature)
    assert replay.status_code == 200 and replay.headers[REPLAY_HEADER] == "original"
    assert replay.content == bytes(c.xian.scalar("SELECT ack_body FROM interop_batches_in WHERE sequence = 1"))

    tampered = body.replace(b'"amount_fen":200', b'"amount_fen":2000', 1)
    assert tampered != body
    refused = _post(c, tampered, key_id, signature)
    assert refused.status_code == 401 and refused.json()["code"] == "E_INTEROP_BAD_SIGNATURE"

    last = int(c.xian.scalar("SELECT max(sequence) FROM interop_batches_in"))
    document = json.loads(body)
    document["sequence"] = last + 2
    gapped = wire.canonical(document)
    gap = _post(c, gapped, key_id, wire.sign("batch", gapped, private))
    assert gap.status_code == 409 and gap.json()["code"] == "E_INTEROP_SEQUENCE_GAP"
    assert gap.json()["expected_sequence"] == last + 1

    stranger = Ed25519PrivateKey.generate()
    wrong = _post(c, body, wire.key_id_of(stranger.public_key()), wire.sign("batch", body, stranger))
    assert wrong.status_code == 401 and wrong.json()["code"] == "E_INTEROP_UNKNOWN_KEY"
    xian_id, xian_private = c.xian.signing.current()  # Xi'an's own key is not one of Xianyang's
    wrong = _post(c, body, xian_id, wire.sign("batch", body, xian_private))
    assert wrong.status_code == 401 and wrong.json()["code"] == "E_INTEROP_UNKNOWN_KEY"

    codes = "'E_INTEROP_BAD_SIGNATURE', 'E_INTEROP_SEQUENCE_GAP', 'E_INTEROP_UNKNOWN_KEY'"
    refusals = c.xian.scalar(f"SELECT count(*) FROM interop_refusals WHERE code IN ({codes})")
    assert refusals == 4
    assert _due_from(c) == 1460 == _due_to(c)  # nothing moved


def test_a_rotated_key_is_refused_until_the_peer_imports_it(cities: Cities, tmp_path: Path) -> None:
    c = cities
    rotated = c.xianyang.cli("interop", "keys", "rotate", check=True)
    assert "new signing key" in rotated.stdout
    _ride(c, [410])
    wait_for("the refusal of the new key", lambda: "E_INTEROP_UNKNOWN_KEY" in (c.xianyang.scalar(
        "SELECT last_error FROM interop_batches_out WHERE state = 'sent'") or ""), logs=_logs(c))  # fmt: skip
    assert _due_from(c) == 1460
    exported = tmp_path / "xianyang-keys.json"
    c.xianyang.cli("interop", "keys", "export", "--out", str(exported), check=True)
    imported = c.xian.cli("interop", "keys", "import", str(exported), check=True)
    assert "imported peer key" in imported.stdout
    wait_for("delivery under the new key", lambda: _outbox(c, "accepted") == 8, logs=_logs(c))
    assert _due_from(c) == 1870 == _due_to(c)
    owed_to_us, we_owe = _positions(c)
    assert owed_to_us == we_owe and sum(owed_to_us.values()) == 1870
    listed = c.xian.cli("interop", "keys", "list", check=True).stdout
    assert listed.count("accepted") >= 2  # the old key still, for the overlap
