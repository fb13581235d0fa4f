"""``yikatong terminal psam``: personalise a registered terminal's emulated PSAM from the key store.

The PSAM image holds each accepted issuer's master purchase and maintenance keys (MPK, MAMK),
exported through the key store's one sanctioned path (``KeyStore.psam_keys``,
``docs/keystore.md``, "Where master keys may go") into ``cardos.psam.psam_image_for_terminal``,
the function the demo uses. The file is written by ``PsamImage.save``: atomically and 0600.
Nothing here prints a key: only the path, the terminal, the issuers and their key versions.

Two choices the command makes for the operator:

* **every key version** the store holds for an issuer goes into the PSAM, not only the
  newest: cards keep the version they were personalised with (``docs/keystore.md``,
  "Versions and rotation"), and a PSAM without it refuses them (9403);
* **the terminal sequence (TTC) continues** above every sequence clearing already holds for
  the terminal (and above the replaced image's, with ``--force``): the TTC is the record's
  ``terminal_seq``, whose uniqueness clearing enforces, so a fresh PSAM restarting at 1 on a
  terminal that already uploaded would have every new tap refused as a duplicate.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from yikatong.commands.init import cli_errors, fail, open_database, open_keystore, out

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from cardos.psam import PsamImage

_TERMINAL_ID_RE: Final = re.compile(r"[0-9a-f]{12}")


def psam_serial(terminal_id: bytes) -> bytes:
    """The PSAM's 10-byte serial: the terminal number, zero-padded in front (unique per terminal)."""
    return bytes(10 - len(terminal_id)) + terminal_id


def _ttc_floor(session: Session, terminal_id: str) -> int:
    """The first terminal sequence clearing has not seen from this terminal (1 for a new one)."""
    from sqlalchemy import func, select

    from clearing.models import InteropForward, Tap

    highest = 0
    for model in (Tap, InteropForward):
        seen = session.execute(
            select(func.max(model.terminal_seq)).where(model.terminal_id == terminal_id)
        ).scalar_one_or_none()
        highest = max(highest, int(seen or 0))
    return highest + 1


def _replaced_ttc(path: Path, terminal_id: bytes) -> int:
    """The next TTC of the image being replaced, if it is this terminal's PSAM (else 1)."""
    from cardos.psam import PsamImage, PsamImageError

    try:
        old = PsamImage.load(path)
    except PsamImageError:
        return 1
    return old.ttc_next if old.terminal_id == terminal_id else 1


def _image(
    terminal: bytes,
    held: list[tuple[bytes, bytes, bytes, int, int]],
    newest: dict[bytes, tuple[bytes, bytes, int, int]],
) -> PsamImage:
    """The newest version of each issuer as the demo personalises it, plus the older versions."""
    from cardos.psam import IssuerKeys, psam_image_for_terminal

    image = psam_image_for_terminal(terminal, psam_serial(terminal), newest)
    older = tuple(
        IssuerKeys(issuer_id=iid, key_version=version, alg_id=alg, mpk=mpk, mamk=mamk)
        for iid, mpk, mamk, version, alg in held
        if version != newest[iid][2]
    )
    return dataclasses.replace(image, issuers=image.issuers + older)


def psam(
    terminal_id: Annotated[str, typer.Option("--terminal-id", help="The registered terminal's id, 12 hex chars.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the PSAM image (JSON, created 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Personalise the terminal's PSAM from the key store and write its image (it holds keys: 0600).

    The PSAM gets the purchase and maintenance master keys, every key version, of each
    registered issuer whose keys are in the key store, so the validator accepts its cards. Load
    it with `yikatong card emulate --psam FILE`. The terminal must be registered first
    (`yikatong terminal register`).
    """
    from clearing.contract.codes import Code
    from clearing.errors import ClearingError
    from clearing.registry import get_terminal, list_issuers

    tid = terminal_id.strip().lower()
    if not _TERMINAL_ID_RE.fullmatch(tid):
        fail(f"E_BAD_TERMINAL_ID: terminal id {terminal_id!r} is not 12 hex chars (the PSAM terminal number)")
    if out_file.exists() and not force:
        fail(f"E_EXISTS: {out_file} exists; pass --force to overwrite it (the PSAM it holds stops being valid)")
    terminal = bytes.fromhex(tid)
    with cli_errors():
        factory = open_database()
        with factory() as session:
            row = get_terminal(session, tid)
            if row is None or not row.active:
                state = "is not registered" if row is None else "is not active"
                raise ClearingError(
                    Code.E_UNKNOWN_TERMINAL,
                    f"terminal {tid} {state}; register it first: "
                    f"`yikatong terminal register --terminal-id {tid} --operator NAME`"
                    + ("" if row is None else " --replace-token"),
                )
            registered = {i.issuer_id: i.city for i in list_issuers(session)}
            ttc_next = _ttc_floor(session, tid)
        store = open_keystore()
        accepted = [i for i in sorted(registered) if store.has_issuer(i)]
        if not accepted:
            raise ClearingError(
                Code.E_NO_ISSUERS,
                "the key store holds no keys of a registered issuer; run `yikatong init` (or `yikatong keys import`)",
            )
        image = _image(terminal, store.psam_keys_all_versions(accepted), store.psam_keys(accepted))
        if force and out_file.exists():
            ttc_next = max(ttc_next, _replaced_ttc(out_file, terminal))
        image = dataclasses.replace(image, ttc_next=ttc_next)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        image.save(out_file)
    out.print(f"PSAM for terminal {tid} written to {out_file} (mode 0600: it holds master keys)")
    sequence = (
        "starts at 1"
        if image.ttc_next == 1
        else f"continues at {image.ttc_next}, after the ones this terminal already used"
    )
    out.print(f"serial {image.serial.hex()}; terminal sequence (TTC) {sequence}")
    for issuer in accepted:
        versions = sorted(k.key_version for k in image.issuers if k.issuer_id.hex() == issuer)
        out.print(f"issuer {issuer} ({registered[issuer]}): key version(s) {', '.join(map(str, versions))}")
    for issuer in sorted(set(registered) - set(accepted)):
        out.print(
            f"issuer {issuer} ({registered[issuer]}) is registered but has no keys here: this PSAM refuses its "
            "cards; import them with `yikatong keys import FILE` and run this again with --force"
        )
