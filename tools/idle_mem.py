#!/usr/bin/env python3
"""idle_mem.py REMORA_BIN BACKEND PORT N: server RSS per idle connection.

Starts `REMORA_BIN serve --backend BACKEND` on 127.0.0.1:PORT, makes one call-free connection to
warm it up, reads its RSS (VmRSS of /proc/PID/status), opens N connections that send nothing,
waits until the server's RSS settles, reads it again and prints one JSON line with the difference
per connection. Everything is closed and the server stopped at the end.
"""
import json, resource, socket, subprocess, sys, time

binary, backend, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0

srv = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--backend", backend,
                        "--max-connections", str(n + 100)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    time.sleep(0.7)
    warm = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.3)
    before = rss(srv.pid)
    conns = []
    for _ in range(n):
        conns.append(socket.create_connection(("127.0.0.1", port)))
    last, settled = -1, 0
    for _ in range(50):
        time.sleep(0.2)
        now = rss(srv.pid)
        settled = settled + 1 if now == last else 0
        last = now
        if settled >= 3:
            break
    after = rss(srv.pid)
    print(json.dumps({"backend": backend, "binary": binary, "connections": n,
                      "rss_before": before, "rss_after": after,
                      "bytes_per_connection": round((after - before) / n)}))
    for c in conns:
        c.close()
    warm.close()
finally:
    srv.terminate()
    srv.wait(timeout=10)
