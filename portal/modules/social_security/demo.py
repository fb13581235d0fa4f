"""Demo data for ``make run``: two years of contributions of the demo citizen, and one correction.

The demo citizen (``yikatong.live_demo``: 13800138000, whose social security card is in the
demo) worked for one employer in 2025 and another from 2026. The rows are made the way a
bureau file is and go through the same import (``SocialSecurityService.import_file``), so
``make run`` shows what an import makes. **Example values, labelled as such**: the two
employers' credit codes are made up (their check characters are right), and the shares are
Shaanxi-like rates, rounded down to the fen, not an official table. Running it again
changes nothing (the file is the same bytes; the correction is a replay).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.orm import Session, sessionmaker

from .rules import HEADER, Amounts, uscc_check_char
from .service import ImportReport, SocialSecurityService

DEMO_ACTOR: Final = "demo"
DEMO_FILE_NAME: Final = "demo-contributions.csv"
# (insurance, employer bps, personal bps): example rates only
DEMO_RATES_BPS: Final = (
    ("pension", 1600, 800),
    ("medical", 650, 200),
    ("unemployment", 70, 30),
    ("work_injury", 40, 0),
    ("maternity", 50, 0),
)
DEMO_EMPLOYERS: Final = (
    ("91610400MA6XYK001", tuple(f"2025-{m:02d}" for m in range(1, 13)), 600_000),  # base 6,000.00 yuan
    ("91610402MA6XWB00Q", tuple(f"2026-{m:02d}" for m in range(1, 12)), 650_000),
)
DEMO_CORRECTION_REASON: Final = "the March 2026 medical base was keyed short by the employer; bureau letter"


def demo_payer(first17: str) -> str:
    return first17 + uscc_check_char(first17)


def demo_file(id_number: str) -> bytes:
    """The demo citizen's contribution file (the same bytes every time)."""
    lines = [",".join(HEADER)]
    for first17, months, base_fen in DEMO_EMPLOYERS:
        payer = demo_payer(first17)
        for month in months:
            for insurance, employer_bps, personal_bps in DEMO_RATES_BPS:
                employer_fen = base_fen * employer_bps // 10_000
                personal_fen = base_fen * personal_bps // 10_000
                lines.append(f"{id_number},{month},{insurance},{payer},{base_fen},{employer_fen},{personal_fen}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def seed_demo_citizen(sessions: sessionmaker[Session], lookup_key: bytes, id_number: str) -> ImportReport:
    """Import the demo file for ``id_number`` and correct one month (idempotent)."""
    service = SocialSecurityService(sessions=sessions, lookup_key=lookup_key)
    report = service.import_file(demo_file(id_number), file_name=DEMO_FILE_NAME, actor=DEMO_ACTOR)
    march = next(
        (
            e
            for e in service.entries_for_staff(id_number, actor=DEMO_ACTOR)
            if e.month == "2026-03" and e.insurance == "medical"
        ),
        None,
    )
    if march is not None:
        base = 680_000
        target = Amounts(base, base * 650 // 10_000, base * 200 // 10_000)
        service.correct(march.entry_id, target, DEMO_CORRECTION_REASON, actor=DEMO_ACTOR)
    return report


__all__ = ["DEMO_ACTOR", "demo_file", "demo_payer", "seed_demo_citizen"]
