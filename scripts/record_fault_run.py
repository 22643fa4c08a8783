#!/usr/bin/env python3
"""Record a real sweep through an upstream that stops accepting connections mid-sweep (the collector's
connect-timeout 503s), for the report's tests (tests/data/cpu-connect-timeout).

A private stack (collector, Prometheus, node exporter on free ports; the running stack's vLLM) relays to
vLLM through a TCP forwarder on 127.0.0.1. Once the first step is done and the second has warmed up, the
forwarder drops its connections and stops accepting, with its accept queue full: new connections then
time out as they do to a front-end too starved to accept, and the collector answers 503
upstream_connect_timeout. Prometheus reaches vLLM through the same forwarder, so vLLM's own series stop
with it. Nothing is faked: k6, the collector, Prometheus and vLLM are the real ones.

    .venv/bin/python scripts/record_fault_run.py [--out DIR]     # ~1 minute; prints the run folder
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.procs import free_port
from loadgen.settings import APP_PYTHON, ROOT, read_settings, vllm_url


class Forwarder:
    """A TCP forwarder to HOST:PORT that can go dark: `outage()` closes every connection and stops
    accepting while its (tiny) accept queue is full, so new connects time out instead of being refused."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(0.2)
        self.port = int(self.listener.getsockname()[1])
        self.dark = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.fillers: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.dark.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.dark.is_set():
                client.close()
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def outage(self) -> None:
        self.dark.set()
        time.sleep(0.3)  # the accept loop has stopped
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        # Fill the accept queue (backlog 1 holds 2 on Linux): further SYNs are dropped, connects time out.
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)


def launcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(APP_PYTHON), str(ROOT / "scripts" / "native_stack.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "reports", help="parent of the run folder")
    parser.add_argument("--steps", default="2,4")
    args = parser.parse_args(argv)
    target = vllm_url(read_settings()).removeprefix("http://").rstrip("/")
    host, _, port = target.partition(":")
    forwarder = Forwarder(host, int(port))
    ports = {key: str(free_port()) for key in ("COLLECTOR_PORT", "PROMETHEUS_PORT", "NODE_EXPORTER_PORT",
                                                "ALERTMANAGER_PORT", "ALERT_WEBHOOK_PORT")}
    with tempfile.TemporaryDirectory() as private:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **ports,
               "SERVING_ENVELOPE_VAR": private, "VLLM_URL": f"http://127.0.0.1:{forwarder.port}",
               "VLLM_PORT": str(free_port()), "COLLECTOR_CONNECT_TIMEOUT": "1"}
        try:
            up = launcher(env, "up", "node-exporter", "prometheus", "collector")
            if up.returncode != 0:
                raise SystemExit(f"error: private stack did not start: {up.stdout[-400:]} {up.stderr[-400:]}")
            time.sleep(6)  # one scrape before the first step's provenance
            args.out.mkdir(parents=True, exist_ok=True)
            before = set(args.out.iterdir())
            sweep = subprocess.Popen(
                [str(APP_PYTHON), "-m", "loadgen", "sweep", "--plan", "capstone", "--steps", args.steps,
                 "--no-search", "--warmup-s", "3", "--steady-s", "12", "--max-tokens", "64", "--no-panels",
                 "--no-remote-write", "--target", f"http://127.0.0.1:{ports['COLLECTOR_PORT']}",
                 "--prometheus", f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}", "--out", str(args.out)],
                cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
            first = args.steps.split(",")[0]
            deadline = time.time() + 240
            while time.time() < deadline and sweep.poll() is None:
                runs = [p for p in set(args.out.iterdir()) - before if p.is_dir()]
                if runs and (runs[0] / "raw" / f"step-{first}-k6-summary.json").exists():  # k6 wrote it at its end
                    time.sleep(5)  # the next step's warm-up (3 s) is over, its steady window begun
                    print("upstream goes dark", file=sys.stderr)
                    forwarder.outage()
                    break
                time.sleep(0.5)
            _, stderr = sweep.communicate(timeout=300)
            print(stderr[-1500:], file=sys.stderr)
        finally:
            launcher(env, "down")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
