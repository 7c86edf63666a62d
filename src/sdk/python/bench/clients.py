"""Per-call latency of rewind's clients for a trivial command (`true`), p50 over N runs,
all against one server in the same run. Usage: REWIND_URL=.. REWIND_API_KEY=.. REWIND_BIN=.. python bench_clients.py [N]"""
import os, statistics, subprocess, sys, time, uuid
from rewind_sdk import Rewind

N = int(sys.argv[1]) if len(sys.argv) > 1 else 30
rewind_bin = os.environ["REWIND_BIN"]

def p50(f):
    samples = []
    for _ in range(N):
        t = time.perf_counter(); f(); samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)

with Rewind() as client:
    with client.create("bench-" + uuid.uuid4().hex[:8]) as sb:
        cli = lambda *a: subprocess.run([rewind_bin, *a], check=False, capture_output=True)
        rows = [
            ("SDK run('true')", p50(lambda: sb.run("true"))),
            ("SDK stream('true'), consumed", p50(lambda: list(sb.stream("true")))),
            ("CLI rewind run -- true (streamed)", p50(lambda: cli("run", sb.name, "--", "true"))),
            ("CLI rewind --json run -- true", p50(lambda: cli("--json", "run", sb.name, "--", "true"))),
        ]
print(f"| client call (N={N}) | p50 ms |\n|---|---|")
for name, ms in rows:
    print(f"| {name} | {ms:.1f} |")
