"""Hand measurement of the new /api/v1 routes against a running rewind (see docs/benchmarks.md)."""
import json, os, statistics, sys, time, urllib.request, uuid

BASE = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10

def req(method, path, key=None, body=None, headers=None, raw=False):
    data = None
    h = dict(headers or {})
    if key: h["x-api-key"] = key
    if body is not None and not isinstance(body, bytes):
        data = json.dumps(body).encode(); h["content-type"] = "application/json"
    elif isinstance(body, bytes):
        data = body
    r = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(r, timeout=120) as resp:
            out = resp.read(); status = resp.status
    except urllib.error.HTTPError as e:
        out = e.read(); status = e.code
    return status, (out if raw else (json.loads(out) if out else None))

def timed(f):
    t = time.perf_counter(); f(); return (time.perf_counter() - t) * 1000

def p50(xs): return statistics.median(xs)

s, b = req("POST", "/api-keys", body={"name": "bench"})
key = b["key"]
vm = "bench-" + uuid.uuid4().hex[:6]
s, b = req("POST", "/api/v1/vms", key, {"name": vm, "vcpus": 1, "memory_mb": 256}); assert s == 201, b

def run(cmd):
    s, b = req("POST", f"/api/v1/vms/{vm}/execute", key, {"command": cmd}); assert s == 200, b

rows = []
def stopstart(body, bg):
    xs = []
    for _ in range(N):
        run(bg)
        xs.append(timed(lambda: req("POST", f"/api/v1/vms/{vm}/stop", key, body)))
        s, b = req("POST", f"/api/v1/vms/{vm}/start", key); assert s == 200, b
    return xs

rows.append(("stop force (sleep 300 in background)", stopstart({"force": True}, "sleep 300 >/dev/null 2>&1 &")))
rows.append(("stop graceful, process exits on SIGTERM", stopstart({}, "sleep 300 >/dev/null 2>&1 &")))
rows.append(("stop graceful, process ignores SIGTERM, timeout_seconds 1", stopstart({"timeout_seconds": 1}, "setsid sh -c 'trap \"\" TERM; while true; do sleep 1; done' >/dev/null 2>&1 &")))
xs = []
for i in range(N):
    xs.append(timed(lambda: req("PUT", f"/api/v1/vms/{vm}/resources", key, {"vcpus": 1 + i % 2, "memory_mb": 256 + 128 * (i % 2)})))
rows.append(("PUT resources (vcpus + memory_mb, live cgroup writes)", xs))
boundary = "b" + uuid.uuid4().hex
blob = os.urandom(1 << 20)
form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/workspace/blob\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob\"\r\n\r\n").encode() + blob + f"\r\n--{boundary}--\r\n".encode()
xs = [timed(lambda: req("POST", f"/api/v1/vms/{vm}/files/upload", key, form, {"content-type": f"multipart/form-data; boundary={boundary}"})) for _ in range(N)]
rows.append(("files/upload 1 MiB (incl. its snapshot)", xs))
xs = [timed(lambda: req("GET", f"/api/v1/vms/{vm}/files/download?path=/workspace/blob", key, raw=True)) for _ in range(N)]
rows.append(("files/download 1 MiB", xs))
xs = [timed(lambda: req("GET", f"/api/v1/vms/{vm}/files?path=/workspace", key)) for _ in range(N)]
rows.append(("files list /workspace", xs))
xs = [timed(lambda: req("GET", "/api/v1/system/metrics", key)) for _ in range(N)]
rows.append(("system/metrics (includes the 200 ms CPU sample)", xs))
xs = [timed(lambda: req("GET", f"/api/v1/vms/{vm}/network", key)) for _ in range(N)]
rows.append(("vms/{vm}/network", xs))
req("DELETE", f"/api/v1/vms/{vm}", key)
print(f"| operation (N={N}, debug build) | p50 ms | min ms | max ms |\n|---|---|---|---|")
for name, xs in rows:
    print(f"| {name} | {p50(xs):.1f} | {min(xs):.1f} | {max(xs):.1f} |")
print("load:", open("/proc/loadavg").read().split()[:3])
