"""One exchange round, and the node that holds what rounds and the receiving endpoint need.

A round (``InteropNode.exchange``, run by ``yikatong interop exchange`` and on a schedule by
``serve``) is: put back the items the issuer could not judge yet (``E_KEY_UNAVAILABLE``, after
a wait), collect new forwarded records into the outbox, build batches of the pending
items, deliver the due batches in order, apply the verdicts of what was acknowledged, deliver
our dispute moves (``message_sender``), and close the windows that are due with the peer
(``window_exchange``). The node also answers the peer's batches and messages. Every
step is idempotent and commits on its own, so a round cut short anywhere (a crash, a stop,
the peer going down) is finished by the next one and moves nothing twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from clearing.business_day import DEFAULT_CLOCK, BusinessDayClock
from clearing.db import session_factory
from interop_xian import acquirer, message_sender, messages, outbox, window_exchange
from interop_xian.config import InteropConfig
from interop_xian.errors import InteropCode, InteropError
from interop_xian.inbox import Receiver
from interop_xian.items import IssuerJudge, ItemVerdict
from interop_xian.keys import SigningKeys
from interop_xian.messages import Message
from interop_xian.sender import Sender, peer_client

log = logging.getLogger("interop_xian.exchange")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class RoundReport:
    collected: int = 0
    built: list[int] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    accepted: int = 0
    rejected: int = 0
    accepted_fen: int = 0
    requeued: int = 0
    outbox: dict[str, int] = field(default_factory=dict)
    messages_delivered: int = 0
    messages_refused: dict[str, str] = field(default_factory=dict)
    messages_failed: dict[str, str] = field(default_factory=dict)
    windows: dict[str, str] = field(default_factory=dict)  # window day -> its state after the round
    windows_stopped: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["failed"] = {str(k): v for k, v in self.failed.items()}
        return out


class UnavailableJudge:
    """The judge of a node without issuer validation: every batch is answered 503 and resent later."""

    def judge(self, *, peer_city: str, batch_id: str, items: Any, received_at: dt.datetime) -> list[ItemVerdict]:
        raise InteropError(InteropCode.E_INTEROP_JUDGE_FAILED, "issuer validation is not available on this node")


class InteropNode:
    """A city's interop: its config, keys, database, judge (issuer side) and peer client (acquirer side)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: InteropConfig,
        signing: SigningKeys,
        judge: IssuerJudge,
        *,
        days: BusinessDayClock = DEFAULT_CLOCK,
        client: httpx.Client | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        on_rejected: acquirer.RejectionHook | None = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.signing = signing
        self.days = days
        self.clock = clock
        self.on_rejected = on_rejected if on_rejected is not None else acquirer.default_rejection_hook()
        self.receiver = Receiver(sessions, config, signing, judge, clock=clock,
                                 handlers={"window": self._on_window, "dispute": self._on_dispute})  # fmt: skip
        self._client = client
        self._round = threading.Lock()

    @property
    def judge(self) -> IssuerJudge:
        return self.receiver.judge

    @judge.setter
    def judge(self, judge: IssuerJudge) -> None:
        self.receiver.judge = judge

    # --- the peer's messages (``POST /interop/v1/messages``) ---------------------------

    def _on_window(self, session: Session, peer: str, message: Message, now: dt.datetime) -> dict[str, Any]:
        """The peer's proposal for a window: our verdicts applied first (they may be why it differs)."""
        content = messages.decode_window(message.content)
        acquirer.apply_verdicts(self.sessions, peer, now=now, days=self.days, on_rejected=self.on_rejected)
        return window_exchange.answer_proposal(session, own_city=self.config.city, peer_city=peer, content=content,
                                               now=now, days=self.days)  # fmt: skip

    def _on_dispute(self, session: Session, peer: str, message: Message, now: dt.datetime) -> dict[str, Any]:
        from interop_xian import disputes

        return dict(disputes.handle_message(session, peer, message, now, days=self.days))

    def exchange(self, *, now: dt.datetime | None = None, deliver: bool = True) -> RoundReport:
        """One round (module docstring); ``deliver=False`` builds and applies without calling the peer."""
        with self._round:
            moment = now or self.clock()
            report = RoundReport()
            report.requeued = acquirer.requeue_unjudged(self.sessions, self.config.peer_city, now=moment,
                                                        resend_after_s=self.config.unavailable_resend_s)  # fmt: skip
            report.collected = outbox.collect(self.sessions, self.config, now=moment)
            report.built = [b.sequence for b in outbox.build_batches(self.sessions, self.config, now=moment)]
            client = (self._client or peer_client(self.config)) if deliver else None
            try:
                if client is not None:
                    delivery = Sender(self.sessions, self.config, self.signing, client).deliver_due(now=moment)
                    report.acknowledged, report.resent, report.failed = (
                        delivery.acknowledged, delivery.resent, delivery.failed,
                    )  # fmt: skip
                applied = acquirer.apply_verdicts(
                    self.sessions, self.config.peer_city, now=moment, days=self.days, on_rejected=self.on_rejected
                )
                report.accepted, report.rejected, report.accepted_fen = (
                    applied.accepted,
                    applied.rejected,
                    applied.accepted_fen,
                )
                if client is not None:
                    # dispute moves before windows: an accepted dispute's money is in the window it names
                    sent = message_sender.deliver_pending(self.sessions, self.config, self.signing, client, now=moment)
                    report.messages_delivered = len(sent.delivered)
                    report.messages_refused, report.messages_failed = sent.refused, sent.failed
                    closed = window_exchange.close_due(
                        self.sessions, self.config, self.signing, client, days=self.days, now=moment
                    )
                    report.windows, report.windows_stopped = closed.windows, closed.stopped
            finally:
                if client is not None and self._client is None:
                    client.close()
            with self.sessions() as session:
                report.outbox = outbox.counts(session, self.config.peer_city)
            return report

    @property
    def schedule_interval_s(self) -> float | None:
        """How often ``serve`` runs a round: None without a peer URL or with the interval 0."""
        if not self.config.peer_url or self.config.exchange_interval_s <= 0:
            return None
        return self.config.exchange_interval_s

    def run_scheduled(self) -> None:
        """``serve``'s job: one round, its failures logged (the next round retries)."""
        report = self.exchange()
        if report.failed:
            log.warning("interop exchange: %d batch(es) not delivered this round", len(report.failed))


def issuer_judge(engine: Engine, keystore: Any, days: BusinessDayClock) -> IssuerJudge:
    """Our own issuer validation (``interop_xian.issuer``) over this database and key store."""
    from clearing.ingest import TacKeys, keystore_dtk
    from interop_xian.issuer import IssuerJudgeDb

    return IssuerJudgeDb(engine, TacKeys(keystore_dtk(keystore), keystore.issuers()), days=days)


def node_from_settings(
    settings: Any, engine: Engine, keystore: Any, *, days: BusinessDayClock = DEFAULT_CLOCK,
    judge: IssuerJudge | None = None,
) -> InteropNode:  # fmt: skip
    """The node of ``yikatong serve`` and ``yikatong interop``: settings, database, key store."""
    config = InteropConfig.from_settings(settings)
    return InteropNode(
        session_factory(engine),
        config,
        SigningKeys.from_settings(settings),
        judge if judge is not None else issuer_judge(engine, keystore, days),
        days=days,
    )


__all__ = ["InteropNode", "RoundReport", "UnavailableJudge", "issuer_judge", "node_from_settings"]
