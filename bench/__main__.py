"""``python -m bench [CASE ...] [--quick] [--json PATH]``: run the benchmark cases.

Prints a table of medians, p99s and ratios, and writes every number (with the
machine it ran on) as JSON, by default to bench/results.json (git-ignored).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import CASES
from bench._common import CaseResult, Row, cpu_ticks, machine, steal_percent

_MODULES = {
    "latency": "bench.latency",
    "throughput": "bench.throughput",
    "large": "bench.large_results",
    "upload": "bench.uploads",
    "resume": "bench.resume",
    "legacy": "bench.legacy",
    "idle": "bench.idle",
    "fanout": "bench.fanout",
}


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("req/s",):
        return f"{value:,.0f} {unit}"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    if abs(value) >= 0.1:
        return f"{value:.2f} {unit}"
    return f"{value:.4f} {unit}"


def _comparison(row: Row) -> str:
    if row.ratio is None:
        return "-"
    if row.kind == "delta":
        return f"{row.ratio:+.1f} ms"
    if row.kind == "speedup":
        return f"{1 / row.ratio:.0f}x faster" if row.ratio else "-"
    if row.kind == "absolute":
        return "-"
    return f"{row.ratio:.2f}x"


def table(results: list[CaseResult]) -> str:
    """The results as a Markdown table (also readable in a terminal)."""
    header = ("case", "measure", "ours", "baseline", "ours vs baseline", "target", "met")
    lines = [header]
    for result in results:
        if result.error and not result.rows:
            lines.append((result.name, "error", "-", "-", "-", "-", "no"))
        for row in result.rows:
            met = "-" if row.met is None else ("yes" if row.met else "NO")
            if result.error and row.met is None:
                met = "n/a"
            lines.append(
                (result.name, row.metric, _number(row.ours, row.unit),
                 _number(row.baseline, row.unit), _comparison(row), row.target, met)
            )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append(
            "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"
        )
        if index == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks, not numbers")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).resolve().parent / "results.json",
        help="where to write the numbers (default: bench/results.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    unknown = [case for case in args.cases if case not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    chosen = args.cases or list(CASES)
    info = machine()
    print(
        f"{info['cpu']}, {info['nproc']} CPUs, Python {info['python']}, "
        f"websocket-client {info['packages']['websocket-client']} "
        f"(frames masked by {info['masking']})"
        f"{', quick' if args.quick else ''}",
        flush=True,
    )
    results: list[CaseResult] = []
    started = time.perf_counter()
    for name in chosen:
        module: Any = importlib.import_module(_MODULES[name])
        print(f"-- {name}: {module.TITLE} ...", flush=True)
        case_start, ticks = time.perf_counter(), cpu_ticks()
        try:
            result: CaseResult = module.run(args.quick)
        except Exception as exc:
            traceback.print_exc()
            result = CaseResult(name, module.TITLE, error=f"{type(exc).__name__}: {exc}")
        result.seconds = time.perf_counter() - case_start
        result.steal = steal_percent(ticks, cpu_ticks())
        results.append(result)
        status = f"error: {result.error}" if result.error else "done"
        steal = "" if result.steal is None else f" (host steal: {result.steal:.1f}% of CPU time)"
        print(f"   {status} in {result.seconds:.1f} s{steal}", flush=True)
    total = time.perf_counter() - started
    print()
    print(table(results))
    for result in results:
        if result.error:
            print(f"[{result.name}] NOT MEASURED: {result.error}")
        for note in result.notes:
            print(f"[{result.name}] {note}")
    print(f"\n{len(results)} cases in {total:.1f} s")
    report = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "seconds": total,
        "machine": info,
        "cases": [result.to_json() for result in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"numbers written to {args.json}")
    return 1 if any(result.error and result.name != "legacy" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
