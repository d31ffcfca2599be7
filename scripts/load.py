#!/usr/bin/env python3
"""Bounded HTTP load through the load balancer, for scripts/demo and scripts/bench.

usage: load.py PORT SECONDS RATE [SIGNAL_AT PID]
Sends about RATE GET / requests a second to 127.0.0.1:PORT for SECONDS (one at a time, 3 s
timeout each); with SIGNAL_AT and PID, sends SIGTERM to PID that many seconds in. Prints one
summary line, `requests=N ok=N failed=N answered={...}`, and exits 1 if any request failed.
SIGINT ends the load early (the summary is still printed).
"""
import collections
import os
import signal
import sys
import time
import urllib.request

port, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
signal_at = float(sys.argv[4]) if len(sys.argv) > 5 else None
victim = int(sys.argv[5]) if len(sys.argv) > 5 else None
ok, failed, who = 0, 0, collections.Counter()
start = time.time()
sent = False
stopping = []
signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
while time.time() - start < seconds and not stopping:
    t = time.time()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3).read()
        who[body.decode().strip()] += 1
        ok += 1
    except Exception as e:  # every failure counts, whatever its kind
        failed += 1
        print(f"  failed: {e}", file=sys.stderr)
    if victim is not None and not sent and time.time() - start >= signal_at:
        os.kill(victim, signal.SIGTERM)
        sent = True
        print(f"  SIGTERM sent to pid {victim} after {signal_at:g} s", file=sys.stderr)
    time.sleep(max(0.0, 1.0 / rate - (time.time() - t)))
print(f"requests={ok + failed} ok={ok} failed={failed} answered={dict(sorted(who.items()))}")
sys.exit(1 if failed else 0)
