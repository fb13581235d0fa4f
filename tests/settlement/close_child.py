"""A close in a process of its own, for the kill and race tests: ``close_child.py URL SCHEMA DAY OUT NOW [SLOW_MS]``.

Prints ``ready`` once imported and connected, then ``{"newly": bool}`` when the close returns.
With SLOW_MS, every step of the close (and the moment after its settle commits) waits that long,
so a kill at a random moment lands in any of them.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "clearing"))

from settleworld import PAYER

from clearing import db
from settlement.close import close_window


def main() -> None:
    url, schema, day, out, now = sys.argv[1:6]
    slow_s = int(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.0
    engine = db.make_engine(url, schema=schema or None)
    with engine.connect():
        pass
    print("ready", flush=True)

    def pause(*_: object) -> None:
        time.sleep(slow_s)

    result = close_window(
        engine, dt.date.fromisoformat(day), now=dt.datetime.fromisoformat(now), payer=PAYER, out_dir=Path(out),
        progress=pause, after_settle=pause,
    )  # fmt: skip
    print(json.dumps({"newly": result.newly_closed}), flush=True)
    engine.dispose()


if __name__ == "__main__":
    main()
