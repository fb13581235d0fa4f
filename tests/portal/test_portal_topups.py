"""The top-up state machine: example paths, then any order of events, retries and crashes.

The stateful test runs the machine against a small model of the world it talks to: a payment
provider (intents, and refunds deduplicated by idempotency key, never more than an intent
took) and clearing (loads by id: pending, posted by a card tap, or cancelled; a cancelled row
is never posted). Events reach the machine in any order and any number of times; effects are
run, lost, or run twice; a crash either loses the last transition entirely or keeps it and
loses its effects. After every step: each top-up loads at most once and loads plus refunds
never exceed payments. At the end, with the windows expired and everything delivered, every
fen paid is either on the card or back with the payer.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from portal import topups as t
from portal.errors import Code, PortalError

CARD = "01007120FFFFFFFF:0000000000000001"


def fresh(amount_fen: int = 5000) -> t.Topup:
    return t.new_topup("tu_1", CARD, amount_fen)[0]


def run(topup: t.Topup, *events: t.Event) -> tuple[t.Topup, list[t.Effect]]:
    effects: list[t.Effect] = []
    for e in events:
        topup, effects = t.apply(topup, e)
    return topup, effects


def paid(amount_fen: int = 5000) -> t.Topup:
    return run(fresh(amount_fen), t.PaymentCreated("pi_a"), t.PaymentSucceeded("pi_a", amount_fen, "cny"))[0]


# --- example paths -----------------------------------------------------------------------


def test_a_new_topup_asks_for_a_payment_intent() -> None:
    topup, effects = t.new_topup("tu_1", CARD, 5000)
    assert topup.state is t.State.CREATED
    assert effects == [t.CreatePaymentIntent("tu_1", CARD, 5000)]


def test_the_happy_path_pays_creates_one_load_and_loads() -> None:
    topup, effects = run(fresh(), t.PaymentCreated("pi_a"), t.PaymentSucceeded("pi_a", 5000, "cny"))
    assert topup.state is t.State.PAID and topup.paid_fen == 5000
    assert effects == [t.CreateLoad("tu_1", CARD, 5000, "pi_a")]
    topup, effects = run(topup, t.LoadCreated())
    assert topup.state is t.State.LOAD_PENDING and effects == []
    topup, effects = run(topup, t.LoadCompleted())
    assert (topup.state, topup.loaded_fen, effects) == (t.State.LOADED, 5000, [])


def test_the_webhook_may_arrive_before_our_create_call_answered() -> None:
    topup, _ = run(fresh(), t.PaymentSucceeded("pi_a", 5000, "cny"), t.PaymentCreated("pi_a"))
    assert topup.state is t.State.PAID and topup.payment_intent_id == "pi_a"


def test_a_repeated_success_re_issues_the_load_and_changes_nothing() -> None:
    topup = paid()
    again, effects = t.apply(topup, t.PaymentSucceeded("pi_a", 5000, "cny"))
    assert again == topup
    assert effects == [t.CreateLoad("tu_1", CARD, 5000, "pi_a")]


def test_a_late_failure_of_an_earlier_attempt_does_not_undo_a_payment() -> None:
    topup, _ = run(paid(), t.PaymentFailed("pi_a"), t.PaymentCanceled("pi_a"), t.PaymentWindowExpired())
    assert topup.state is t.State.PAID


def test_a_failed_attempt_can_be_followed_by_a_successful_one() -> None:
    topup, _ = run(fresh(), t.PaymentCreated("pi_a"), t.PaymentFailed("pi_a"))
    assert topup.state is t.State.FAILED
    topup, _ = run(topup, t.PaymentSucceeded("pi_a", 5000, "cny"))
    assert topup.state is t.State.PAID


@pytest.mark.parametrize(
    "payment",
    [t.PaymentSucceeded("pi_a", 4999, "cny"), t.PaymentSucceeded("pi_a", 5000, "usd")],
)
def test_a_payment_of_another_amount_or_currency_is_refunded_never_loaded(payment: t.PaymentSucceeded) -> None:
    topup, effects = run(fresh(), t.PaymentCreated("pi_a"), payment)
    assert topup.state is t.State.PAYMENT_PENDING and topup.paid_fen == 0
    assert [type(e) for e in effects] == [t.Notice, t.Refund]
    assert effects[1] == t.Refund("pi_a", payment.amount_fen)
    topup, effects = run(topup, payment)  # the webhook again: no second notice, the refund still due
    assert effects == [t.Refund("pi_a", payment.amount_fen)]
    topup, effects = run(topup, t.RefundSucceeded("pi_a", payment.amount_fen))
    assert effects == [] and topup.unmatched[0].refunded


def test_a_second_intent_paid_after_the_first_is_refunded() -> None:
    topup, effects = run(paid(), t.PaymentSucceeded("pi_b", 5000, "cny"))
    assert topup.state is t.State.PAID
    assert t.Refund("pi_b", 5000) in effects and t.CreateLoad("tu_1", CARD, 5000, "pi_a") in effects


def test_a_payment_after_the_topup_was_canceled_is_refunded() -> None:
    topup, effects = run(fresh(), t.PaymentCreated("pi_a"), t.PaymentWindowExpired())
    assert topup.state is t.State.CANCELED and effects == [t.CancelPaymentIntent("pi_a")]
    topup, effects = run(topup, t.PaymentSucceeded("pi_a", 5000, "cny"))
    assert topup.state is t.State.CANCELED and t.Refund("pi_a", 5000) in effects


def test_a_refund_cancels_the_load_first_then_refunds() -> None:
    topup, effects = run(paid(), t.LoadCreated(), t.RefundRequested(t.RefundReason.CITIZEN))
    assert topup.state is t.State.REFUND_REQUESTED
    assert effects == [t.CancelLoad("tu_1", CARD, 5000, "pi_a")]
    topup, effects = run(topup, t.LoadVoided())
    assert effects == [t.Refund("pi_a", 5000)]
    topup, effects = run(topup, t.RefundSucceeded("pi_a", 5000))
    assert (topup.state, topup.refunded_fen, effects) == (t.State.REFUNDED, 5000, [])


def test_a_card_that_takes_the_load_before_the_cancel_wins_and_no_refund_is_made() -> None:
    topup, effects = run(paid(), t.RefundRequested(t.RefundReason.CITIZEN), t.LoadCompleted())
    assert topup.state is t.State.LOADED
    assert [e.code for e in effects if isinstance(e, t.Notice)] == [Code.N_LOADED_BEFORE_REFUND]
    assert not any(isinstance(e, t.Refund) for e in effects)


def test_clearing_expiring_the_load_starts_the_refund() -> None:
    topup, effects = run(paid(), t.LoadCreated(), t.LoadVoided())
    assert topup.state is t.State.REFUND_REQUESTED and topup.refund_reason is t.RefundReason.EXPIRED
    assert effects == [t.Refund("pi_a", 5000)]


def test_the_load_window_expiring_requests_a_refund() -> None:
    topup, effects = run(paid(), t.LoadCreated(), t.LoadWindowExpired())
    assert topup.refund_reason is t.RefundReason.EXPIRED
    assert effects == [t.CancelLoad("tu_1", CARD, 5000, "pi_a")]


def test_a_refund_made_outside_the_flow_stops_the_load() -> None:
    topup, effects = run(paid(), t.LoadCreated(), t.RefundSucceeded("pi_a", 5000))
    assert topup.state is t.State.REFUND_REQUESTED and topup.refund_reason is t.RefundReason.EXTERNAL
    assert t.CancelLoad("tu_1", CARD, 5000, "pi_a") in effects
    topup, effects = run(topup, t.LoadVoided())
    assert topup.state is t.State.REFUNDED and effects == []


@pytest.mark.parametrize(
    "events",
    [(), (t.PaymentCreated("pi_a"),), (t.PaymentCreated("pi_a"), t.PaymentWindowExpired())],
)
def test_nothing_unpaid_can_be_refunded(events: tuple[t.Event, ...]) -> None:
    topup, _ = run(fresh(), *events)
    with pytest.raises(PortalError) as info:
        t.apply(topup, t.RefundRequested(t.RefundReason.CITIZEN))
    assert info.value.code is Code.E_TOPUP_NOT_REFUNDABLE


def test_a_loaded_topup_cannot_be_refunded() -> None:
    topup, _ = run(paid(), t.LoadCompleted())
    with pytest.raises(PortalError):
        t.apply(topup, t.RefundRequested(t.RefundReason.STAFF))


def test_what_may_still_land_counts_open_and_unloaded_topups() -> None:
    assert t.may_still_land_fen(fresh()) == 5000
    assert t.may_still_land_fen(paid()) == 5000
    assert t.may_still_land_fen(run(paid(), t.LoadCompleted())[0]) == 0  # now in the shadow balance
    assert t.may_still_land_fen(run(paid(), t.RefundRequested(t.RefundReason.CITIZEN))[0]) == 5000
    assert t.may_still_land_fen(run(paid(), t.RefundRequested(t.RefundReason.CITIZEN), t.LoadVoided())[0]) == 0
    assert t.may_still_land_fen(run(fresh(), t.PaymentWindowExpired())[0]) == 0


def test_topup_ids_fit_clearing_load_ids_and_amounts_are_integer_fen() -> None:
    with pytest.raises(ValueError):
        t.Topup("x" * 41, CARD, 5000)
    for amount in (0, -1, 50.0, True):
        with pytest.raises(ValueError):
            t.Topup("tu_1", CARD, amount)  # type: ignore[arg-type]


# --- the world the machine talks to, and the stateful test -------------------------------


class World:
    """A payment provider and clearing, as much of them as the top-up flow relies on."""

    def __init__(self) -> None:
        self.intents: dict[str, tuple[int, str]] = {}  # id -> (amount, status)
        self.refunds: dict[str, tuple[str, int]] = {}  # idempotency key -> (intent, amount)
        self.external_fen = 0  # refunded at the provider outside the flow (dashboard, support)
        self.loads: dict[str, str] = {}  # load id -> pending | posted | cancelled
        self.load_amounts: dict[str, int] = {}
        self._ids = itertools.count(1)

    def new_intent(self, amount_fen: int) -> str:
        pi = f"pi_{next(self._ids)}"
        self.intents[pi] = (amount_fen, "open")
        return pi

    @property
    def paid_fen(self) -> int:
        return sum(a for a, s in self.intents.values() if s == "succeeded")

    @property
    def refunded_fen(self) -> int:
        return sum(a for _, a in self.refunds.values())

    def refunded_of(self, pi: str) -> int:
        return sum(a for p, a in self.refunds.values() if p == pi)

    @property
    def loaded_fen(self) -> int:
        return sum(self.load_amounts[i] for i, s in self.loads.items() if s == "posted")

    def run(self, effect: t.Effect) -> list[t.Event]:
        """Carry out one effect as the shell would, answering the events its result means."""
        match effect:
            case t.CreatePaymentIntent(amount_fen=amount):
                return [t.PaymentCreated(self.new_intent(amount))]
            case t.CancelPaymentIntent(pi):
                amount, status = self.intents[pi]
                if status in ("open", "failed"):
                    self.intents[pi] = (amount, "canceled")
                    return [t.PaymentCanceled(pi)]
                return []  # the provider refuses to cancel a succeeded intent
            case t.CreateLoad(load_id=load_id, amount_fen=amount):
                self.loads.setdefault(load_id, "pending")
                self.load_amounts.setdefault(load_id, amount)
                return [self._load_answer(load_id)]
            case t.CancelLoad(load_id=load_id, amount_fen=amount):
                self.load_amounts.setdefault(load_id, amount)
                if self.loads.setdefault(load_id, "cancelled") == "pending":
                    self.loads[load_id] = "cancelled"
                return [self._load_answer(load_id)]
            case t.Refund(pi, amount):
                # As ``payments.refund_once``: earlier refunds (ours or external) count; only the rest is refunded.
                taken, status = self.intents[pi]
                already = self.refunded_of(pi)
                if status != "succeeded":
                    return []  # refused by the provider
                if already < amount:
                    if amount > taken:
                        return []  # refused by the provider: more than the intent took
                    self.refunds[f"{effect.idempotency_key}:rest:{amount - already}"] = (pi, amount - already)
                return [t.RefundSucceeded(pi, self.refunded_of(pi))]
            case t.Notice():
                return []
        raise AssertionError(effect)

    def _load_answer(self, load_id: str) -> t.Event:
        answers: dict[str, t.Event] = {
            "pending": t.LoadCreated(),
            "posted": t.LoadCompleted(),
            "cancelled": t.LoadVoided(),
        }
        return answers[self.loads[load_id]]


AMOUNT = 5000


class TopupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.inbox: list[t.Event] = []
        self.outbox: list[t.Effect] = []
        self.last: tuple[t.Topup, t.Event, list[t.Effect]] | None = None
        self.last_committed = False  # an effect of the last transition ran, so it was committed
        self.steps = 0

    @initialize(amount=st.sampled_from([100, AMOUNT, 100_000]))
    def start(self, amount: int) -> None:
        self.topup, effects = t.new_topup("tu_1", CARD, amount)
        self.outbox.extend(effects)

    # --- the machine receives events --------------------------------------------------

    def _apply(self, event: t.Event) -> None:
        before = self.topup
        try:
            self.topup, effects = t.apply(before, event)
        except PortalError as exc:
            assert isinstance(event, t.RefundRequested) and exc.code is Code.E_TOPUP_NOT_REFUNDABLE
            assert before.state not in (t.State.PAID, t.State.LOAD_PENDING, t.State.REFUND_REQUESTED)
            return
        self.outbox.extend(effects)
        self.last = (before, event, effects)
        self.last_committed = False

    @precondition(lambda self: self.inbox)
    @rule(data=st.data(), keep=st.booleans())
    def deliver(self, data: st.DataObject, keep: bool) -> None:
        """Any queued event, in any order; kept ones are delivered again later."""
        i = data.draw(st.integers(0, len(self.inbox) - 1))
        event = self.inbox[i] if keep else self.inbox.pop(i)
        self._apply(event)

    @rule(reason=st.sampled_from(list(t.RefundReason)[:2]))
    def citizen_asks_for_a_refund(self, reason: t.RefundReason) -> None:
        self._apply(t.RefundRequested(reason))

    @rule()
    def the_load_window_expires(self) -> None:
        self._apply(t.LoadWindowExpired())

    @precondition(lambda self: self.steps >= 20)  # late, or most runs would end before anyone pays
    @rule()
    def the_payment_window_expires(self) -> None:
        self._apply(t.PaymentWindowExpired())

    @rule()
    def a_healthy_round(self) -> None:
        """Everything queued runs and arrives in order: the system makes progress between faults."""
        self._round()

    @precondition(lambda self: self.last is not None)
    @rule(committed=st.booleans())
    def crash(self, committed: bool) -> None:
        """The process dies after ``apply``: the transition is lost, or kept with its effects lost.

        Effects leave the outbox only after the transition that made them is committed, so a
        transition whose effects already ran cannot be lost any more.
        """
        assert self.last is not None
        before, event, effects = self.last
        committed = committed or self.last_committed
        for effect in effects:
            if effect in self.outbox:
                self.outbox.remove(effect)
        if not committed:
            self.topup = before
        self._apply(event)  # the event comes again (the provider retries, the sweep re-reads)

    @rule()
    def sweep(self) -> None:
        self.outbox.extend(t.due_effects(self.topup))

    # --- the world acts ---------------------------------------------------------------

    @precondition(lambda self: self.outbox)
    @rule(data=st.data(), lose=st.booleans(), twice=st.booleans())
    def run_effect(self, data: st.DataObject, lose: bool, twice: bool) -> None:
        effect = self.outbox.pop(data.draw(st.integers(0, len(self.outbox) - 1)))
        if lose:
            return
        if self.last is not None and effect in self.last[2]:
            self.last_committed = True
        for _ in range(2 if twice else 1):
            self.inbox.extend(self.world.run(effect))

    @precondition(lambda self: any(s in ("open", "failed") for _, s in self.world.intents.values()))
    @rule(data=st.data(), fails=st.booleans())
    def citizen_pays(self, data: st.DataObject, fails: bool) -> None:
        payable = sorted(pi for pi, (_, s) in self.world.intents.items() if s in ("open", "failed"))
        pi = data.draw(st.sampled_from(payable))
        amount, _ = self.world.intents[pi]
        self.world.intents[pi] = (amount, "failed" if fails else "succeeded")
        self.inbox.append(t.PaymentFailed(pi) if fails else t.PaymentSucceeded(pi, amount, "cny"))

    @precondition(lambda self: len(self.world.intents) < 3)
    @rule(amount=st.sampled_from([AMOUNT, 1]))
    def someone_pays_another_intent_tagged_with_this_topup(self, amount: int) -> None:
        pi = self.world.new_intent(amount)
        self.world.intents[pi] = (amount, "succeeded")
        self.inbox.append(t.PaymentSucceeded(pi, amount, "cny"))

    def _externally_refundable(self) -> list[str]:
        """Intents the machine knows as paid (its own or set aside), not yet refunded in full at the provider.

        A refund webhook that overtakes the payment's own success is noted and dropped (left for
        the sweep, which is not built); the model does not send one.
        """
        known = {u.payment_intent_id for u in self.topup.unmatched}
        if self.topup.state in t.HOLDS_PAYMENT and self.topup.payment_intent_id is not None:
            known.add(self.topup.payment_intent_id)
        return sorted(pi for pi in known if self.world.refunded_of(pi) < self.world.intents[pi][0])

    @precondition(lambda self: self.world.external_fen == 0 and self._externally_refundable())
    @rule(data=st.data(), partial=st.booleans(), single_too=st.booleans())
    def someone_refunds_at_the_provider(self, data: st.DataObject, partial: bool, single_too: bool) -> None:
        """A clerk refunds at the dashboard (1 fen of goodwill, or all that is left): charge.refunded
        brings the total, refund.created / refund.updated (maybe) that refund's part alone."""
        pi = data.draw(st.sampled_from(self._externally_refundable()))
        taken, _ = self.world.intents[pi]
        amount = 1 if partial else taken - self.world.refunded_of(pi)
        self.world.refunds[f"dashboard:{len(self.world.refunds)}"] = (pi, amount)
        self.world.external_fen += amount
        self.inbox.append(t.RefundSucceeded(pi, self.world.refunded_of(pi)))
        if single_too:
            self.inbox.append(t.RefundSucceeded(pi, amount))

    @precondition(lambda self: "pending" in self.world.loads.values())
    @rule()
    def the_card_meets_a_reader(self) -> None:
        for load_id, status in self.world.loads.items():
            if status == "pending":
                self.world.loads[load_id] = "posted"
                self.inbox.append(t.LoadCompleted())

    @precondition(lambda self: "pending" in self.world.loads.values())
    @rule()
    def clearing_expires_the_load(self) -> None:
        for load_id, status in self.world.loads.items():
            if status == "pending":
                self.world.loads[load_id] = "cancelled"
                self.inbox.append(t.LoadVoided())

    # --- what must always hold --------------------------------------------------------

    @invariant()
    def count(self) -> None:
        self.steps += 1

    @invariant()
    def each_topup_loads_at_most_once(self) -> None:
        assert list(self.world.loads) in ([], ["tu_1"])
        assert self.world.loaded_fen in (0, self.topup.amount_fen)

    @invariant()
    def refunds_plus_loads_never_exceed_payments(self) -> None:
        """Unless a refund made outside the flow raced the card: never by more than that refund."""
        over = self.world.loaded_fen + self.world.refunded_fen - self.world.paid_fen
        assert over <= self.world.external_fen, vars(self.world)
        assert all(self.world.refunded_of(pi) <= amount for pi, (amount, _) in self.world.intents.items())
        assert t.money_ok(self.topup), self.topup
        assert t.over_credited_fen(self.topup) == 0 or t.loaded_and_refunded(self.topup), self.topup

    @invariant()
    def the_machine_never_claims_more_than_the_world_did(self) -> None:
        assert self.topup.loaded_fen <= self.world.loaded_fen
        assert self.topup.paid_fen <= self.world.paid_fen
        if self.topup.payment_intent_id is not None:
            assert self.topup.refunded_fen <= self.world.refunded_of(self.topup.payment_intent_id)
        if self.topup.state is t.State.REFUNDED:
            assert self.world.loaded_fen == 0

    def teardown(self) -> None:
        """Let everything arrive; then expire the windows, and every fen paid is loaded or refunded."""
        if not hasattr(self, "topup"):
            return
        self._drain()
        # Without any window expiring, a healthy system settles everything that does not wait on
        # the citizen (to pay) or the card (to meet a reader): lost effects are re-issued.
        waiting = (t.State.PAYMENT_PENDING, t.State.FAILED, t.State.LOAD_PENDING)
        assert self.topup.state in (*waiting, *t.FINAL), self.topup
        assert all(u.refunded for u in self.topup.unmatched), self.topup
        assert self.topup.state is not t.State.LOAD_PENDING or self.world.loads.get("tu_1") == "pending"
        for window in (t.PaymentWindowExpired(), t.LoadWindowExpired()):
            self._apply(window)
        self._drain()
        over = self.world.loaded_fen + self.world.refunded_fen - self.world.paid_fen
        assert over >= 0, vars(self.world)  # every fen paid is on the card or refunded
        if over:  # loaded and refunded outside the flow: recorded, to the fen, for staff recovery
            assert t.loaded_and_refunded(self.topup) and t.over_credited_fen(self.topup) == over, self.topup
        assert self.topup.state in t.FINAL, self.topup
        event(f"ended {self.topup.state}, {len(self.topup.unmatched)} unmatched")

    def _drain(self) -> None:
        for _ in range(20):
            self.outbox.extend(t.due_effects(self.topup))
            if not self.inbox and not self.outbox:
                return
            self._round()
        raise AssertionError("the top-up did not settle")

    def _round(self) -> None:
        while self.outbox:
            effect = self.outbox.pop(0)
            if self.last is not None and effect in self.last[2]:
                self.last_committed = True
            self.inbox.extend(self.world.run(effect))
        while self.inbox:
            self._apply(self.inbox.pop(0))


TopupMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_topup_state_machine = TopupMachine.TestCase
