"""Run every benchmark module in order and print their figures.

Each module exposes ``main(quick: bool) -> None`` and prints its own figures with the
baseline it compares against, measured in the same run. ``--quick`` is for smoke runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def discover() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def run(names: list[str], quick: bool) -> int:
    failed = 0
    for name in names:
        print(f"\n=== benchmarks.{name} ===", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.main(quick=quick)
        except SystemExit as exc:  # a benchmark that cannot run here says why and exits
            print(f"skipped: {exc}")
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}")
        print(f"--- {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke runs")
    args = parser.parse_args()
    sys.exit(run(args.names or discover(), args.quick))


if __name__ == "__main__":
    main()
