#!/usr/bin/env python3
"""Benchmarks of hecd-haproxy for scripts/bench (section 5): how fast a key change reaches
traffic, and a 500-backend churn. Starts (and stops) its own hecd-haproxy instances and test
apps; etcd is the bench's.

usage: lbbench.py ETCD_URL HECD_HAPROXY TINY_SERVER WORKDIR HECD_INIT

1. Two apps behind hecd-haproxy, requests sent back to back on fresh connections. Ten times:
   a third app's key is put → the first request it serves (ms after the put); then its key is
   deleted → the last request it serves (ms after the delete). Medians of 10.
2. 500 keys put → all 500 servers in HAProxy; then 50 changes a second for 10 s (a random key
   deleted, put back, or moved to another port): changes applied, HAProxy reloads (worker
   processes replaced, and "reloading" log lines), time to converge, HAProxy's RSS before and
   after, hecd-haproxy's peak RSS and CPU.
3. Confirmed drain against a fixed one: three apps that answer after 300 ms and exit at once on
   SIGTERM, under hecd-init with --drain 5, behind two hecd-haproxy; 50 requests a second
   through both. Ten times each: SIGTERM to one instance → its app signalled (ms), and the
   failed requests. The fixed drain is the same with hecd-init looking for balancers under a
   prefix where none announce (--lb-prefix /nobody).
"""
import base64
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

etcd_url, lb_bin, tiny, work, hecd_init = sys.argv[1:6]
clk = os.sysconf("SC_CLK_TCK")
procs = []


def now_ms():
    return time.time() * 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def b64(text):
    return base64.b64encode(text.encode()).decode()


def etcd(path, body):
    req = urllib.request.Request(etcd_url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=5).read())


def put(key, value):
    etcd("/v3/kv/put", {"key": b64(key), "value": b64(value)})


def delete(key):
    etcd("/v3/kv/deleterange", {"key": b64(key)})


def start(args, **kw):
    p = subprocess.Popen(args, start_new_session=True, **kw)
    procs.append(p)
    return p


def descendants(pid):
    out = []
    for child in children(pid):
        out += [child] + descendants(child)
    return out


def stop(p):
    """SIGKILLs p's process group and every descendant's (an app under hecd-init leads a
    session of its own, HAProxy a process group of its own), then reaps p."""
    for pid in [p.pid] + descendants(p.pid):
        for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
            except (ProcessLookupError, PermissionError):
                pass
    p.wait(timeout=10)


def admin(sock, command):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sock)
    s.sendall(command.encode() + b"\n")
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out.decode()


def servers(sock):
    lines = admin(sock, "show servers state servers").splitlines()[2:]
    return {f[3]: f"{f[4]}:{f[18]}" for f in (l.split() for l in lines) if len(f) > 18}


def within(seconds, cond, what):
    deadline = time.time() + seconds
    while not cond():
        if time.time() > deadline:
            raise SystemExit(f"lbbench: timed out waiting for {what}")
        time.sleep(0.002)


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return sorted(int(c) for c in f.read().split())
    except FileNotFoundError:
        return []


class App:
    """A tiny_server printing `request / at MS` for every request it serves (with `init`,
    under hecd-init with those arguments before `--`)."""

    def __init__(self, name, init=None, env=None):
        self.name = name
        self.port = free_port()
        self.times = []
        self.signalled = None
        env = dict(os.environ, TINY_LOG_REQUESTS="1", **(env or {}))
        cmd = [tiny, str(self.port), name]
        if init is not None:
            cmd = [hecd_init, "--name", name, "--advertise", f"127.0.0.1:{self.port}"] + init + ["--"] + cmd
        self.p = start(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        ready = threading.Event()
        self.done = threading.Event()

        def read():
            for line in self.p.stdout:
                if line.startswith("listening"):
                    ready.set()
                elif line.startswith("request"):
                    self.times.append(float(line.split()[-1]))
                elif line.startswith("signal 15 at "):
                    self.signalled = float(line.split()[-1])
            self.done.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(10):
            raise SystemExit("lbbench: app did not start")


class Lb:
    def __init__(self, prefix, inter, extra=()):
        self.port = free_port()
        tag = (prefix + "".join(extra)).strip("/").replace("/", "-")
        self.dir = os.path.join(work, "lbbench-" + tag)
        self.log = open(self.dir + ".log", "w")
        self.p = start([lb_bin, "--etcd", etcd_url, "--listen", f"127.0.0.1:{self.port}", "--dir", self.dir,
                        "--prefix", prefix, "--check-inter", inter] + list(extra), stderr=self.log, stdin=subprocess.DEVNULL)
        self.sock = os.path.join(self.dir, "admin.sock")
        within(20, lambda: os.path.exists(self.sock) and "Pid" in self._try("show info"), "HAProxy to start")

    def _try(self, command):
        try:
            return admin(self.sock, command)
        except OSError:
            return ""

    def master(self):
        with open(os.path.join(self.dir, "haproxy.pid")) as f:
            return int(f.read().strip())

    def log_text(self):
        self.log.flush()
        with open(self.dir + ".log") as f:
            return f.read()


def latency():
    prefix = "/app/lbbench"
    a, b = App("a"), App("b")
    put(f"{prefix}/a", f"127.0.0.1:{a.port}")
    put(f"{prefix}/b", f"127.0.0.1:{b.port}")
    lb = Lb(prefix, "500ms")
    within(10, lambda: len(servers(lb.sock)) == 2, "2 servers")
    stop_load = threading.Event()
    sent = [0]

    def load():
        while not stop_load.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", lb.port), timeout=3)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                while s.recv(4096):
                    pass
                s.close()
            except OSError:
                pass
            sent[0] += 1

    t = threading.Thread(target=load, daemon=True)
    t.start()
    put_ms, del_ms = [], []
    for run in range(10):
        x = App(f"x{run}")
        time.sleep(0.2)
        t0 = now_ms()
        put(f"{prefix}/x", f"127.0.0.1:{x.port}")
        within(5, lambda: x.times, "a request to the new server")
        put_ms.append(x.times[0] - t0)
        time.sleep(0.5)
        t1 = now_ms()
        delete(f"{prefix}/x")
        time.sleep(1)
        after = [r for r in x.times if r >= t1]
        del_ms.append((after[-1] - t1) if after else 0.0)
        within(5, lambda: "x" not in servers(lb.sock), "the server to be removed")
        stop(x.p)
    stop_load.set()
    t.join(5)
    print(f"{'key put → first request served by it':44} {statistics.median(put_ms):.1f} ms")
    print(f"{'key delete → last request served by it':44} {statistics.median(del_ms):.1f} ms")
    print(f"(runs: put {' '.join(f'{v:.1f}' for v in put_ms)} ms; delete {' '.join(f'{v:.1f}' for v in del_ms)} ms;"
          f" requests back to back on fresh connections, {sent[0]} sent in all)")
    stop(lb.p)
    stop(a.p)
    stop(b.p)


def churn():
    prefix = "/app/churn"
    n = 500
    lb = Lb(prefix, "5s")
    master = lb.master()
    workers = children(master)
    t0 = now_ms()
    live = {}
    for i in range(n):
        live[f"s{i}"] = 30000 + i
        put(f"{prefix}/s{i}", f"127.0.0.1:{30000 + i}")
    within(60, lambda: len(servers(lb.sock)) == n, f"{n} servers")
    all_in = now_ms() - t0
    ha_before = sum(rss_kib(p) for p in [master] + children(master))
    lb_t0 = ticks(lb.p.pid)
    log_start = len(lb.log_text())
    rng = random.Random(7)
    changes = 0
    started = time.time()
    while time.time() - started < 10:
        name = f"s{rng.randrange(n)}"
        if name in live and rng.random() < 0.7:
            delete(f"{prefix}/{name}")
            del live[name]
        else:
            live[name] = 40000 + rng.randrange(20000)
            put(f"{prefix}/{name}", f"127.0.0.1:{live[name]}")
        changes += 1
        time.sleep(max(0.0, started + changes / 50 - time.time()))
    churn_s = time.time() - started
    t1 = now_ms()
    want = {k: f"127.0.0.1:{v}" for k, v in live.items()}
    within(60, lambda: servers(lb.sock) == want, "HAProxy to equal etcd")
    converged = now_ms() - t1
    cpu = 100.0 * (ticks(lb.p.pid) - lb_t0) / clk / churn_s
    time.sleep(1)
    ha_after = sum(rss_kib(p) for p in [master] + children(master))
    log = lb.log_text()[log_start:]
    applied = sum(log.count(w) for w in ("added server", "draining server", " moved to ", "back in service"))
    reloads = log.count("reloading HAProxy")
    same_workers = children(master) == workers
    print(f"{n} backends, then 50 changes a second for 10 s")
    print(f"{'500 keys put → all 500 servers in HAProxy':44} {all_in:.0f} ms")
    print(f"{'changes made in etcd / applied at runtime':44} {changes} / {applied}")
    print(f"{'HAProxy equal to etcd after the last change':44} {converged:.0f} ms")
    print(f"{'reloads (log lines; workers replaced)':44} {reloads}; {'no' if same_workers else 'YES'}")
    print(f"{'HAProxy RSS, master + worker, before / after':44} {ha_before} / {ha_after} KiB")
    print(f"{'hecd-haproxy peak RSS (VmHWM) / CPU in churn':44} {rss_kib(lb.p.pid, 'VmHWM')} KiB / {cpu:.1f}% of a core")
    print("(a change is a delete, a put back, or a move to another port; applied = add, drain, move or"
          " back-in-service log lines, each one runtime command set; removed servers are deleted once idle)")
    stop(lb.p)


class ConcurrentLoad:
    """`rate` requests a second through `ports` in turn, each on its own thread."""

    def __init__(self, ports, rate):
        self.failed = 0
        self.sent = 0
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()

        def one(port):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.settimeout(5)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                head = s.recv(64)
                while s.recv(4096):
                    pass
                s.close()
                ok = head.split(b" ")[1:2] == [b"200"]
            except OSError:
                ok = False
            if not ok:
                with self.lock:
                    self.failed += 1

        def run():
            started = time.time()
            while not self.stop_flag.is_set():
                threading.Thread(target=one, args=(ports[self.sent % len(ports)],), daemon=True).start()
                self.sent += 1
                time.sleep(max(0.0, started + self.sent / rate - time.time()))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self):
        self.stop_flag.set()
        self.thread.join(5)
        time.sleep(1)  # the last requests (300 ms each) finish
        return self.sent, self.failed


def announced():
    """The balancer ids announced under /hecd/lbs/ now."""
    body = etcd("/v3/kv/range", {"key": b64("/hecd/lbs/"), "range_end": b64("/hecd/lbs0"), "keys_only": True})
    return {base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1] for kv in body.get("kvs", [])}


def confirmed_drain():
    prefix = "/app/cdrain"
    # The balancers of the sections above are gone, but their announcements live on until
    # their leases end (5 s): a stop now would wait for them (as it should for a dead balancer).
    within(15, lambda: not announced(), "earlier balancers' announcements to expire")
    lbs = []
    for lb_id in ("lb-a", "lb-b"):
        lbs.append(Lb(prefix, "500ms", ["--lb-id", lb_id]))
    results = {}
    for mode, extra in (("confirmed", []), ("fixed", ["--lb-prefix", "/nobody"])):
        init = ["--etcd", etcd_url, "--prefix", prefix, "--ttl", "3", "--check-interval", "200ms",
                "--drain", "5"] + extra
        apps = [App(f"{mode}-{i}", init, {"TINY_DELAY_MS": "300"}) for i in range(3)]
        names = {a.name for a in apps}
        within(20, lambda: all(set(servers(lb.sock)) == names for lb in lbs), "3 servers on both balancers")
        load = ConcurrentLoad([lb.port for lb in lbs], 50)
        took = []
        for run in range(10):
            names = {a.name for a in apps}
            within(20, lambda: all(set(servers(lb.sock)) == names for lb in lbs), "3 servers on both balancers")
            time.sleep(0.5)
            victim = apps.pop(0)
            sent = now_ms()
            victim.p.send_signal(signal.SIGTERM)
            victim.done.wait(15)
            victim.p.wait(timeout=10)
            took.append(victim.signalled - sent if victim.signalled else float("nan"))
            apps.append(App(f"{mode}-{run + 3}", init, {"TINY_DELAY_MS": "300"}))
        sent, failed = load.finish()
        for a in apps:
            stop(a.p)
        results[mode] = (took, sent, failed)
    for lb in lbs:
        stop(lb.p)
    print("confirmed drain against a fixed one (--drain 5, apps answering after 300 ms, 2 balancers)")
    for mode, (took, sent, failed) in results.items():
        label = "SIGTERM → app signalled, " + ("confirmations" if mode == "confirmed" else "fixed drain")
        print(f"{label:44} {statistics.median(took):.0f} ms (failed {failed} of {sent})")
        print(f"  (runs: {' '.join(f'{t:.0f}' for t in took)} ms)")


try:
    latency()
    churn()
    confirmed_drain()
finally:
    for p in procs:
        if p.poll() is None:
            stop(p)
