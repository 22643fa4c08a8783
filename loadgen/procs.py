"""Process helpers shared by native mode, the benchmarks and the tests: a free port, a process group
started, waited for and stopped, and the CPU time of a process tree.

Imports nothing of the repo's own but `loadgen.settings` (for ROOT, the default working directory).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psutil
import requests

from loadgen.settings import ROOT


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class StartError(Exception):
    """A process did not come up: one line saying which and why; `exited`: it died during start-up."""

    def __init__(self, message: str, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited


def spawn_group(command: list[str], stdout: IO[bytes] | IO[str] | int | None, *,
                stderr: IO[bytes] | IO[str] | int | None = subprocess.STDOUT,
                env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """COMMAND in a session (and process group) of its own, so that stop_group ends all it forks."""
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=cwd,
                            env=dict(os.environ if env is None else env), start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float, what: str,
               interval: float = 0.2) -> None:
    """Until URL answers 200; StartError when PROCESS exits first or TIMEOUT seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"{what} exited with status {process.returncode} during start-up", exited=True)
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise StartError(f"{what} not ready after {timeout:.0f} s ({url})")


def _gone(pid: int) -> bool:
    """No such process, or only its zombie is left."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def stop_group(process: subprocess.Popen[bytes] | int, grace: float = 30.0) -> bool:
    """SIGTERM to the process group PROCESS leads (a Popen of spawn_group, or a PID), SIGKILL after
    GRACE seconds; a Popen is reaped. False when it had already exited."""
    if isinstance(process, int):
        pid, child = process, None
    else:
        pid, child = process.pid, process
        if child.poll() is not None:
            return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    if child is not None:
        try:
            child.wait(grace)
            return True
        except subprocess.TimeoutExpired:
            pass
    else:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if _gone(pid):
                return True
            time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if child is not None:
        child.wait()
    return True


@contextmanager
def running(command: list[str], env: Mapping[str, str], log: Path, ready_url: str, timeout: float,
            what: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process group logging to LOG, ready when READY_URL answers 200; stopped (all of it) on exit."""
    with log.open("wb") as out:
        process = spawn_group(command, out, env=env)
    try:
        wait_ready(ready_url, process, timeout, what)
        yield process
    finally:
        stop_group(process)


# --- CPU time ---------------------------------------------------------------------------------------

def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """CPU time of PROCESSES: the scheduler's nanosecond count (/proc/PID/schedstat) where Linux has
    it, as a 64-token request costs a proxy a few milliseconds, under psutil's 10 ms tick."""
    total = 0.0
    for process in processes:
        try:
            with open(f"/proc/{process.pid}/schedstat") as stat:
                total += int(stat.read().split()[0]) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the OS's own count)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class TreeCpu:
    """CPU seconds of a process and all its descendants, polled (children that exit between polls keep
    their last reading); `finish` takes what the OS reports for reaped children when that is larger."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[tuple[int, float], float] = {}
        self.rusage_start = children_cpu()

    def poll(self) -> None:
        try:
            processes = process_tree(self.root.pid)
        except psutil.NoSuchProcess:
            return
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self.seen[(process.pid, process.create_time())] = cpu_seconds([process])

    def finish(self) -> float:
        """Call after the root was waited for."""
        return max(sum(self.seen.values()), children_cpu() - self.rusage_start)
