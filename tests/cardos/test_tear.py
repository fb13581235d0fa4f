"""Tear at every APDU and both phases: the card is unchanged or fully committed, never between.

card-profile.md, "Atomicity and tear"; epurse-public-sources.md section 8 (GET TRANSACTION
PROVE tells a torn tap's terminal which of the two happened).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from cardkit import Terminal, Tx, make_card, select_apdu, transit_record

from cardos import crypto
from cardos.apdu import split_response
from cardos.card import Card
from cardos.image import CardImage
from cardos.os import CardTorn, TearPlan
from cardos.profile import AID_PURSE

Phase = Literal["before_commit", "after_commit"]
PHASES: list[Phase] = ["before_commit", "after_commit"]
FLOWS = {"purchase": 3, "capp": 4, "load": 3}  # APDUs per flow: SELECT, INITIALIZE, [80 DC], DEBIT/CREDIT


def run_flow(terminal: Terminal, flow: str) -> Tx:
    if flow == "load":
        return terminal.load(700)
    if flow == "capp":
        return terminal.purchase(300, capp=True, record=transit_record(300, 9_700))
    return terminal.purchase(300)


def committed_twin(flow: str, alg: int) -> Card:
    """The same card, same randoms, same terminal, no tear: what "fully committed" looks like."""
    twin = make_card(alg_id=alg)
    tx = run_flow(Terminal(twin, twin.keys), flow)
    assert tx.ok
    return twin


def check_after_tear(card: Card, terminal: Terminal, before: CardImage, twin: Card, flow: str, committed: bool) -> None:
    card.power_on()
    assert split_response(card.transmit(select_apdu(AID_PURSE)))[1] == 0x9000
    assert card.image == (twin.image if committed else before)
    tx = terminal.last
    assert tx is not None
    loading = flow == "load"
    counter = (before.purse.online_counter if loading else before.purse.offline_counter) + 1
    data, sw = terminal.prove(tx.tx_type, counter)
    if not committed:
        assert (data, sw) == (b"", 0x6A83)
        return
    assert sw == 0x9000
    if loading:
        # the host's MAC2 as the card accepted it, and the TAC the lost CREDIT response carried
        assert data[:4] == tx.mac2 and terminal.load_tac_verifies(tx, data[4:])
    else:
        assert terminal.purchase_verifies(tx, data[:4], data[4:])
    twin_tx = Terminal(twin, twin.keys).prove(tx.tx_type, counter)
    assert twin_tx == (data, sw)


@pytest.mark.parametrize("alg", [crypto.ALG_3DES, crypto.ALG_SM4])
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_tear_at_every_apdu_leaves_old_or_new_state(flow: str, phase: Phase, alg: int) -> None:
    twin = committed_twin(flow, alg)
    n = FLOWS[flow]
    for at in range(1, n + 1):
        card = make_card(alg_id=alg)
        before = card.image
        terminal = Terminal(card, card.keys)
        card.tear = TearPlan(at, phase)
        with pytest.raises(CardTorn):
            run_flow(terminal, flow)
        assert not card.powered
        committed = at == n and phase == "after_commit"
        check_after_tear(card, terminal, before, twin, flow, committed)
        # the card is not stuck: the terminal retries and it goes through once
        retry = run_flow(terminal, flow)
        assert retry.ok
        expected_balance = before.purse.balance_fen + (700 if flow == "load" else -300) * (1 + int(committed))
        assert card.balance_fen == expected_balance


@pytest.mark.parametrize("phase", PHASES)
def test_torn_debit_is_resolved_by_prove_and_never_charged_twice(phase: Phase) -> None:
    """The validator's recovery (section 8): prove first, and re-run only on 6A83."""
    card = make_card()
    terminal = Terminal(card, card.keys)
    card.tear = TearPlan(4, phase)
    with pytest.raises(CardTorn):
        terminal.purchase(300, capp=True, record=transit_record(300, 9_700))
    pending = terminal.last
    assert pending is not None and pending.counter is not None
    card.power_on()
    terminal.select_purse()
    data, sw = terminal.prove(0x09, pending.counter + 1)
    if sw == 0x9000:
        assert terminal.purchase_verifies(pending, data[:4], data[4:])
    else:
        assert sw == 0x6A83
        assert terminal.purchase(300, capp=True, record=transit_record(300, 9_700)).ok
    assert card.balance_fen == 9_700 and card.offline_counter == 1


@pytest.mark.parametrize("alg", [crypto.ALG_3DES, crypto.ALG_SM4])
@pytest.mark.parametrize("phase", PHASES)
def test_torn_load_is_resolved_by_prove_and_never_credited_twice(phase: Phase, alg: int) -> None:
    """The load host's recovery: prove P2 02 with the online counter + 1; reload only on 6A83."""
    card = make_card(alg_id=alg)
    terminal = Terminal(card, card.keys)
    card.tear = TearPlan(3, phase)  # at CREDIT FOR LOAD, the commit APDU
    with pytest.raises(CardTorn):
        terminal.load(700)
    pending = terminal.last
    assert pending is not None and pending.counter is not None and pending.tac == b""  # TAC lost
    card.power_on()
    terminal.select_purse()
    data, sw = terminal.prove(crypto.TX_EP_LOAD, pending.counter + 1)
    if phase == "after_commit":
        assert sw == 0x9000 and data[:4] == pending.mac2
        assert data[4:] == crypto.load_tac(
            card.keys.dtk,
            10_700,
            pending.counter,
            700,
            crypto.TX_EP_LOAD,
            terminal.terminal_id,
            pending.date4,
            pending.time3,
            alg,
        )
    else:
        assert (data, sw) == (b"", 0x6A83)
        assert card.online_counter == pending.counter  # nothing moved: a new load is safe
        assert terminal.load(700).ok
    assert card.balance_fen == 10_700 and card.online_counter == 1


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_tear_at_the_commit_apdu_persists_old_or_new_image_on_disk(flow: str, phase: Phase, tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    image = make_card().image
    image.save_atomic(path)
    card = Card.load(path)
    card.power_on()
    terminal = Terminal(card, card.keys)
    card.tear = TearPlan(FLOWS[flow], phase)
    with pytest.raises(CardTorn):
        run_flow(terminal, flow)
    reloaded = CardImage.load(path)
    assert reloaded == card.image
    if phase == "before_commit":
        assert reloaded == image
    else:
        assert reloaded != image and reloaded.purse.balance_fen == image.purse.balance_fen + (
            700 if flow == "load" else -300
        )
    # the proof is on disk exactly when the commit is
    proofs = reloaded.load_prove if flow == "load" else reloaded.prove
    assert len(proofs) == int(phase == "after_commit")


def test_tear_on_a_pin_verify_before_commit_costs_no_try() -> None:
    from cardos.profile import AID_AUTH, CardType

    card = make_card(card_type=CardType.SOCIAL_SECURITY)
    card.transmit(select_apdu(AID_AUTH))
    card.tear = TearPlan(2, "before_commit")
    with pytest.raises(CardTorn):
        card.transmit(bytes.fromhex("0020000106") + b"000000")
    assert card.pin_tries_left == 3
    card.power_on()
    card.transmit(select_apdu(AID_AUTH))
    card.tear = TearPlan(2, "after_commit")
    with pytest.raises(CardTorn):
        card.transmit(bytes.fromhex("0020000106") + b"000000")
    assert card.pin_tries_left == 2
