#!/usr/bin/env python3
"""Render the fault/outcome table of RELIABILITY.md from the rows the reliability tests append.

    KERNEL_LOADER_RELIABILITY_REPORT=/tmp/rows.jsonl scripts/test tests/test_reliability.py
    python scripts/reliability_table.py /tmp/rows.jsonl > table.md

Temp paths in error messages are shortened to <tmp>/... so the table does not depend on the machine.
"""

from __future__ import annotations

import json
import re
import sys


def render(rows: list[dict]) -> str:
    out = ["| # | fault | outcome | detail (message or numbers from the run) |", "|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        detail = re.sub(r"/tmp/[^\s:)]*?/([^/\s:)]+)(?=[\s:)]|$)", r"<tmp>/\1", r.get("detail", ""))
        cells = [str(i), r["fault"], r["outcome"], detail]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    sys.stdout.write(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
