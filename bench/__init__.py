"""The benchmark suite: ``python -m bench`` (see bench/RESULTS.md for a full run).

Each case compares the client with the least a program could do for the same job,
against one zero-latency emulator in another process on 127.0.0.1, alternating the
two sides (A B, B A, ...) so that machine noise hits both alike, and reports
medians, p99s and ratios measured in the same run:

========== ==========================================================================
latency    one caller, enhance_prompt round trip, against a raw websocket-client loop
throughput 16 and 64 threads sharing one Client, against the raw loop in one thread
large      10 MB and 50 MB base64 results until Image.read(), against the floor
           (websocket-client receive, json.loads, b64decode); peak memory per frame
upload     a 10 MB image through upload_image, against a raw send of the same frame
resume     from a dropped connection to a buffered result, against a bare connect
legacy     sequential text2img against the official legacy SDK runware==0.1.5
idle       CPU time of a connected, idle client with the heartbeat on
fanout     200 and 1,000 text2img tasks (1 s each) from one thread through client.map,
           against a raw loop that pipelines the same tasks; threads and memory per task
========== ==========================================================================

Speed goals live here, not in the test suite: tests/test_bench_smoke.py only runs
``--quick`` and checks that every case reports.
"""

from __future__ import annotations

CASES = ("latency", "throughput", "large", "upload", "resume", "legacy", "idle", "fanout")
