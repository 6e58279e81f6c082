"""Where a kernel's warps stall, per SASS instruction, from an Nsight Compute source page.

    ncu --import REPORT.ncu-rep --page source --csv --print-source sass > src.csv
    python3 bench/ncu_stalls.py src.csv [--top 50]

Prints the instructions with the most warp stall samples (all samples and not-issued), each
with its share and address, then the samples summed by opcode. The warp-specialised tk
kernel's producer and query warps spend their lives waiting on barriers: read their wait
loops apart from the consumers' (the addresses tell which role's code an instruction is in).

    python3 bench/ncu_stalls.py src.csv --region 'HGMMA.64x16x16|BAR.SYNC 0x6'

also summarises one role's code apart: the instructions from the first to the last that match
the regex (e.g. the decode warpgroup's narrow wgmmas and its named barrier), with their share
of all samples, their top instructions, opcodes and stall reasons.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
from collections import Counter


def _number(text: str) -> float:
    try:
        return float(text.replace(",", "")) if text.strip() else 0.0
    except ValueError:
        return 0.0


def read_rows(path: str) -> tuple[list[str], list[dict]]:
    with open(path, newline="", errors="replace") as f:
        lines = f.read().splitlines()
    # ncu prints ==PROF== lines and a kernel title before the table: start at the header row.
    start = next(i for i, line in enumerate(lines) if "Source" in line and "," in line)
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    return list(reader.fieldnames or []), list(reader)


def column(fields: list[str], *needles: str) -> str | None:
    for f in fields:
        if all(n.lower() in f.lower() for n in needles):
            return f
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=50)
    ap.add_argument("--region", help="regex: also summarise the span of instructions it brackets")
    args = ap.parse_args(argv)
    fields, rows = read_rows(args.csv)
    print("columns:", "; ".join(fields))
    cols = _columns(fields)
    total = sum(_number(r[cols["all"]]) for r in rows) or 1.0
    print(f"{len(rows)} instructions, {total:.0f} samples")
    summarise(fields, rows, cols, total, args.top)
    if args.region:
        hits = [i for i, r in enumerate(rows) if re.search(args.region, r[cols["src"]])]
        if not hits:
            print(f"region {args.region!r}: no instruction matches")
            return
        span = rows[hits[0]: hits[-1] + 1]
        part = sum(_number(r[cols["all"]]) for r in span)
        print(f"region {args.region!r}: {len(span)} instructions ({span[0][cols['addr']]} .. "
              f"{span[-1][cols['addr']]}), {part:.0f} samples, {100 * part / total:.2f} % of all")
        summarise(fields, span, cols, part or 1.0, args.top)


def _columns(fields: list[str]) -> dict:
    cols = {"all": column(fields, "stall sampling", "all") or column(fields, "sampling", "all"),
            "not": column(fields, "stall sampling", "not"),
            "src": column(fields, "source") or fields[1],
            "addr": column(fields, "address") or fields[0]}
    if cols["all"] is None:
        raise SystemExit("no stall sampling column in this page")
    return cols


def summarise(fields: list[str], rows: list[dict], cols: dict, total: float, top: int) -> None:
    """The top instructions of rows by samples, then their samples by opcode and by reason (shares of total)."""
    all_col, not_col, src_col, addr_col = cols["all"], cols["not"], cols["src"], cols["addr"]
    ranked = sorted(rows, key=lambda r: -_number(r[all_col]))
    for r in ranked[:top]:
        s = _number(r[all_col])
        n = _number(r[not_col]) if not_col else 0.0
        print(f"{100 * s / total:6.2f} % {s:8.0f} (not issued {n:8.0f})  {r[addr_col]:>8s}  {r[src_col].strip()}")
    by_op = Counter()
    for r in rows:
        text = r[src_col].strip()
        op = text.split()[0] if text else "?"
        if op.startswith("@"):
            op = text.split()[1] if len(text.split()) > 1 else op
        by_op[op.split(".")[0]] += _number(r[all_col])
    print("by opcode:")
    for op, s in by_op.most_common(25):
        print(f"{100 * s / total:6.2f} %  {op}")
    print(by_reason(fields, rows, total))


def by_reason(fields: list[str], rows: list[dict], total: float) -> str:
    """Samples summed by stall reason (the stall_* columns, all samples), largest first.

    stall_no_inst is the instruction fetch (an instruction-cache miss), stall_long_sb a wait for
    global memory, stall_barrier a named barrier, stall_wait a fixed-latency dependency.
    """
    reasons = [f for f in fields if f.startswith("stall_") and "not issued" not in f.lower()]
    sums = sorted(((sum(_number(r[f]) for r in rows), f) for f in reasons), reverse=True)
    lines = ["by stall reason:"]
    lines += [f"{100 * v / total:6.2f} %  {f}" for v, f in sums if v > 0]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
