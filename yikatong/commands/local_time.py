"""Times as the CLI shows them: Asia/Shanghai, with the zone written out.

Clearing stores every time as UTC (``ARCHITECTURE.md``, "Time"); operators read them in the
city's time. The offset is always printed, so a time copied out of a terminal session is
never mistaken for UTC (``2026-12-02 08:15:02 +08:00``). JSON gets the same instant as
ISO 8601 at +08:00, the offset the wire contract's tap times use.
"""

from __future__ import annotations

import datetime as dt

from cardos.records import SHANGHAI_TZ
from terminals.display import shanghai_stamp


def _local(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: clearing times are aware (stored as UTC)")
    return moment.astimezone(SHANGHAI_TZ).replace(microsecond=0)


def shanghai(moment: dt.datetime | None, missing: str = "-") -> str:
    """``2026-12-02 08:15:02 +08:00`` for people; ``missing`` for no time."""
    return missing if moment is None else shanghai_stamp(moment)  # the validator console's format


def shanghai_iso(moment: dt.datetime | None) -> str | None:
    """``2026-12-02T08:15:02+08:00`` for scripts (None stays None)."""
    return None if moment is None else _local(moment).isoformat()


__all__ = ["shanghai", "shanghai_iso"]
