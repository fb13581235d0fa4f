"""``yikatong card emulate``: put a card image, a PSAM image, or both into vpcd's readers.

The card goes into the vpcd slot given by ``--vpcd`` (default slot 0, "Virtual PCD 00 00"
at 127.0.0.1:35963); ``--psam`` puts a PSAM image into the next slot (port + 1, "Virtual
PCD 00 01"). Either may be given alone: a validator's PSAM stays in its slot for the whole
shift while cards come and go, so it runs in its own process (``--psam`` only) and each card
in another (``--image`` only); stopping a card's process must not take the PSAM with it.
Images are written back after every commit, so the card keeps its balance and the PSAM its
terminal sequence across runs (``card-profile.md``, "Card image"). Runs until Ctrl-C or
SIGTERM, which remove what it inserted from the readers.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from cardos.vpcd import DEFAULT_HOST, PORT_CARD, VpcdClient, VpcdHandle, VpcdUnavailable

out = Console(soft_wrap=True)  # one status line, never wrapped
err = Console(stderr=True, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


def _parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) <= 0xFFFF:
        raise _fail(f"E_BAD_VPCD_ADDRESS: --vpcd must be HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port_text)


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def emulate(
    image: Annotated[
        Path | None, typer.Option("--image", help="Card image (JSON) to emulate; updated after every commit.")
    ] = None,
    vpcd: Annotated[
        str, typer.Option("--vpcd", help="HOST:PORT of vpcd's card slot; the PSAM takes PORT + 1.")
    ] = f"{DEFAULT_HOST}:{PORT_CARD}",
    psam: Annotated[
        Path | None,
        typer.Option("--psam", help="PSAM image (JSON) to put into the second vpcd slot (alone: PSAM only)."),
    ] = None,
) -> None:
    """Connect a card image, a PSAM image or both to the vpcd virtual readers until Ctrl-C."""
    from cardos.card import Card
    from cardos.image import CardImage, ImageError
    from cardos.psam import Psam, PsamImageError

    if image is None and psam is None:
        raise _fail("E_USAGE: give --image CARD, --psam PSAM, or both")
    host, port = _parse_hostport(vpcd)
    if psam is not None and port + 1 > 0xFFFF:
        raise _fail(f"E_BAD_VPCD_ADDRESS: the PSAM needs port {port + 1}, above 65535")
    card = card_image = None
    if image is not None:
        try:
            card_image = CardImage.load(image)
        except OSError as exc:
            raise _fail(f"E_CARD_IMAGE: cannot read {image}: {exc.strerror}") from None
        except ImageError as exc:
            raise _fail(f"{exc} ({image})") from None
        card = Card.from_image(card_image, path=image)
    psam_card = None
    if psam is not None:
        try:
            psam_card = Psam.from_file(psam)
        except PsamImageError as exc:
            raise _fail(str(exc)) from None

    handles: list[VpcdHandle] = []
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            if psam_card is not None:  # first: a validator finds its PSAM before any card
                handles.append(VpcdClient(psam_card, host, port + 1).serve_in_thread("vpcd-psam"))
            if card is not None:
                handles.append(VpcdClient(card, host, port).serve_in_thread("vpcd-card"))
        except VpcdUnavailable as exc:
            raise _fail(str(exc)) from None
        inserted = []
        if card_image is not None:
            asn = card_image.public[10:20].hex()
            inserted.append(f"card {asn} ({_yuan(card_image.purse.balance_fen)} CNY) in vpcd {host}:{port}")
        if psam_card is not None:
            inserted.append(f"PSAM {psam_card.image.terminal_id.hex()} in vpcd {host}:{port + 1}")
        out.print(f"[green]inserted[/] {'; '.join(inserted)} - Ctrl-C to remove")
        try:
            while not stop.wait(0.2):
                ended = next((h for h in handles if h.ended.is_set()), None)
                if ended is not None:
                    detail = f": {ended.error}" if ended.error is not None else ""
                    raise _fail(f"E_EMULATOR_ENDED: {ended.thread.name} ended ({ended.reason}){detail}")
        except KeyboardInterrupt:
            pass
    finally:
        for handle in handles:
            handle.stop()
        signal.signal(signal.SIGTERM, previous)
    removed = [name for name, there in (("card", card), ("PSAM", psam_card)) if there is not None]
    out.print(f"[yellow]removed[/] {' and '.join(removed)}")
