"""Render the "Bad inputs" table of docs/reliability.md from the cases of tests/test_reliability.py.

    python scripts/render_bad_input_table.py            # print the table
    python scripts/render_bad_input_table.py --write    # rewrite it in docs/reliability.md, between the markers
    python scripts/render_bad_input_table.py --check    # exit 1 if the doc's table is stale

Each case is run (on CPU, kernels patched out) to capture the message users see.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="rewrite the table in docs/reliability.md")
    group.add_argument("--check", action="store_true", help="exit 1 if docs/reliability.md's table is stale")
    args = parser.parse_args()

    os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    cases = importlib.import_module("test_reliability")
    table = cases.render_table()
    if not (args.write or args.check):
        print(table, end="")
        return 0
    text = cases.DOC.read_text()
    if args.check:
        stale = cases.doc_table(text) != table
        print(f"{cases.DOC.relative_to(ROOT)}: {'stale, run ' + cases.REGENERATE if stale else 'current'}")
        return int(stale)
    cases.DOC.write_text(cases.with_table(text, table))
    print(f"wrote {len(cases.CASES)} rows to {cases.DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
