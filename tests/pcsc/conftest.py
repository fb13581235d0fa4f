"""PC/SC fixtures: real pcscd + vpcd (``tests/pcsc_support.py`` says what they do).

``pcscd`` (session; a ``PcscEnv`` with the reader names and ports) and ``vpcd_insert``
(insert a ``SmartCard`` into a slot for one test) are registered once for the whole run by
``tests/conftest.py`` (a session fixture imported twice would exist twice and deadlock on
the vpcd lock). Here: ``card_path`` /
``psam_path`` (a Xianyang card image and a field PSAM image on disk whose keys derive
from ``tests.pcsc_support.MASTER_KEYS``, so the two work together).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cardos import crypto
from cardos.personalise import personalise
from cardos.profile import ISSUER_XIANYANG
from tests.cardos.cardkit import management_info, public_info
from tests.pcsc_support import CARD_ASN, OPENING_FEN, derived_keys, field_psam_image


@pytest.fixture
def card_path(tmp_path: Path) -> Path:
    public = dataclasses.replace(public_info(asn=CARD_ASN), issuer_id=ISSUER_XIANYANG)
    keys = derived_keys(ISSUER_XIANYANG, CARD_ASN)
    image = personalise(keys=keys, public=public, management=management_info(), balance_fen=OPENING_FEN)
    path = tmp_path / "card.json"
    image.save_atomic(path)
    return path


@pytest.fixture
def psam_path(tmp_path: Path) -> Path:
    path = tmp_path / "psam.json"
    field_psam_image({ISSUER_XIANYANG: crypto.ALG_3DES}).save(path)
    return path
