#!/usr/bin/env python3
"""Turns the JSON lines of `make test-matrix` (PGSHIFT_MATRIX_OUT) into a markdown table:
one row per ordered pair of majors, with the cutover pause, the upgrade's wall time, the
acknowledged writes and the result."""
import json
import sys


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    rows.sort(key=lambda r: (r["source"], r["target"]))
    print("| source -> target | direction | result | cutover pause (ms) | upgrade (s) | acknowledged writes | client errors |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        direction = "upgrade" if r["source"] < r["target"] else "downgrade"
        print(f"| {r['source']} -> {r['target']} | {direction} | {r['result']} | "
              f"{r.get('pause_ms', '-')} | {r.get('upgrade_s', '-')} | {r.get('acknowledged', '-')} | "
              f"{r.get('errors', '-')} |")
    passed = sum(r["result"] == "passed" for r in rows)
    print(f"\n{passed} of {len(rows)} pairs passed.")


if __name__ == "__main__":
    main(sys.argv[1])
