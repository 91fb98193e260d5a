"""Case 1, latency with one caller: ``Client.enhance_prompt`` against a raw loop.

Both sides make the same minimal round trip (``newPromptEnhance`` -> one text) on
their own connection to the same zero-latency emulator, one call at a time,
interleaved call by call. Targets: median <= 1.25x raw, p99 <= 2x raw.
"""

from __future__ import annotations

from bench._common import (
    CaseResult,
    EmulatorProcess,
    RawConnection,
    interleave,
    make_client,
    ratio_row,
    raw_enhance,
    summary,
    timed,
)

NAME = "latency"
TITLE = "Latency, one caller (enhance_prompt round trip)"
PROMPT = "a lighthouse at dawn"


def run(quick: bool) -> CaseResult:
    rounds, warmup = (100, 10) if quick else (4000, 300)
    result = CaseResult(NAME, TITLE)
    with EmulatorProcess() as emu, make_client(emu.url) as client:
        raw = RawConnection(emu.url)
        try:
            samples = interleave(
                {
                    "ours": timed(lambda: client.enhance_prompt(PROMPT)),
                    "raw": timed(lambda: raw_enhance(raw, PROMPT)),
                },
                rounds,
                warmup,
            )
        finally:
            raw.close()
    ours, base = summary(samples["ours"]), summary(samples["raw"])
    ms = {k: {s: v * 1e3 if s != "n" else v for s, v in d.items()} for k, d in
          (("ours", ours), ("raw", base))}  # fmt: skip
    result.details = {"unit": "ms", **ms}
    result.rows = [
        ratio_row("median", ms["ours"]["median"], ms["raw"]["median"], "ms", 1.25),
        ratio_row("p99", ms["ours"]["p99"], ms["raw"]["p99"], "ms", 2.0),
    ]
    result.notes.append(f"{rounds} calls per side after {warmup} warm-up calls, alternating.")
    return result
