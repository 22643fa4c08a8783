"""Slow-reading clients for an open-loop step: the share of the schedule's arrivals a mix marks as slow
readers is sent from here, not by k6, because k6's HTTP client reads every response at full speed.

Each slow reader connects with a small receive buffer, sends its streaming chat request at its scheduled
instant (the same schedule and zero as k6's, which k6 prints as `zero_ms=...` before its first request)
and reads the answer at `read_bytes_per_s`, so the collector's back-pressure (and what lies behind it)
is exercised. Its records have the shape of k6's, with `slow_reader: true`, and are kept apart from the
step's client statistics: a request held open by its reader is not a request waiting for the server, and
Little's law on the client's side must not count it as one. The report gives them a table of their own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from loadgen.k6_runner import PROMPT_TEXT

READ_CHUNK = 256


def _words(n: int, offset: int) -> str:
    vocabulary = PROMPT_TEXT.split()
    return " ".join(vocabulary[(i + offset) % len(vocabulary)] for i in range(n))


def _body(cfg: dict[str, Any], nonce: str, prompt_words: int, max_tokens: int) -> bytes:
    messages = []
    if cfg.get("system_prompt"):
        messages.append({"role": "system", "content": cfg["system_prompt"]})
    messages.append({"role": "user", "content": f"[{nonce}] {_words(prompt_words, 0)}"})
    return json.dumps({"model": cfg["model"], "messages": messages, "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}, "ignore_eos": cfg["ignore_eos"],
                       "temperature": 0}).encode()


def _dechunk(payload: bytes) -> bytes:
    """An HTTP/1.1 chunked body, unframed (an SSE line may straddle two chunks)."""
    out, rest = b"", payload
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            break
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


def _usage(body: bytes) -> tuple[dict[str, Any] | None, str]:
    usage, error = None, ""
    for line in body.decode(errors="replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data in ("", "[DONE]"):
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            error = "bad_chunk"
            continue
        if chunk.get("error"):
            error = "stream_error"
        if chunk.get("usage"):
            usage = chunk["usage"]
    return usage, error or ("" if usage else "no_usage")


async def _one(cfg: dict[str, Any], row: list[float], index: int, zero_ms: float) -> dict[str, Any]:
    """One slow reader: connect, send at its instant, read the answer at read_bytes_per_s."""
    due = zero_ms + row[0]
    await asyncio.sleep(max(0.0, due / 1000 - time.time()))
    url = urlparse(cfg["target"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    start = time.time()
    record: dict[str, Any] = {"step": cfg["step"], "index": index, "turn": 0, "zero_ms": zero_ms,
                              "scheduled_ms": due, "start_ms": start * 1000, "late_ms": max(0.0, start * 1000 - due),
                              "max_tokens": int(row[2]), "slow_reader": True, "ttft_ms": 0.0, "total_ms": 0.0,
                              "status": 0, "output_tokens": 0, "prompt_tokens": 0, "error": ""}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(cfg["slow_recv_buffer_bytes"]))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_CHUNK)
        body = _body(cfg, f"{cfg['run_id']}-{index}-slow", int(row[1]), int(row[2]))
        headers = {"Host": f"{host}:{port}", "Content-Type": "application/json", "Content-Length": str(len(body)),
                   "Connection": "close"}
        if cfg.get("api_key"):
            headers["Authorization"] = f"Bearer {cfg['api_key']}"
        writer.write(f"POST {url.path.rstrip('/')}/v1/chat/completions HTTP/1.1\r\n".encode()
                     + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), cfg["request_timeout_s"])
        record["ttft_ms"] = (time.time() - start) * 1000  # the collector holds the head until the first token
        record["status"] = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        data = b""
        per_chunk_s = READ_CHUNK / float(cfg["slow_read_bytes_per_s"])
        deadline = start + float(cfg["request_timeout_s"])
        while time.time() < deadline:
            chunk = await asyncio.wait_for(reader.read(READ_CHUNK), max(0.1, deadline - time.time()))
            if not chunk:
                break
            data += chunk
            await asyncio.sleep(per_chunk_s)
        writer.close()
        record["total_ms"] = (time.time() - start) * 1000
        record["bytes"] = len(data)
        head, _, payload = data.partition(b"\r\n\r\n")
        if record["status"] != 200:
            record["error"] = "http_5xx" if record["status"] >= 500 else "http_4xx"
        else:
            chunked = b"transfer-encoding: chunked" in head.lower()
            usage, error = _usage(_dechunk(payload) if chunked else payload)
            record["error"] = error
            if usage:
                record["output_tokens"] = usage.get("completion_tokens", 0)
                record["prompt_tokens"] = usage.get("prompt_tokens", 0)
    except (TimeoutError, OSError) as error:
        record["error"] = "timeout" if isinstance(error, asyncio.TimeoutError) else "connection"
        record["total_ms"] = (time.time() - start) * 1000
    finally:
        sock.close()
    return record


def _zero_from(records_path: Path, deadline: float) -> float | None:
    """k6's schedule zero, printed as `zero_ms=...` before its first request."""
    while time.time() < deadline:
        if records_path.exists():
            for line in records_path.read_text().splitlines():
                if line.startswith("zero_ms="):
                    return float(line.partition("=")[2])
        time.sleep(0.05)
    return None


class SlowReaders:
    """Runs a step's slow readers in a thread beside k6; `records` once `join()` returns."""

    def __init__(self, cfg: dict[str, Any], rows: list[list[float]], records_path: Path, out_path: Path) -> None:
        self.cfg, self.rows, self.records_path, self.out_path = cfg, rows, records_path, out_path
        self.records: list[dict[str, Any]] = []
        self.note: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if any(len(r) > 4 and r[4] for r in self.rows):
            self.thread.start()

    def _run(self) -> None:
        zero = _zero_from(self.records_path, time.time() + 120)
        if zero is None:
            self.note = "slow readers: k6 never printed its schedule's zero; none were sent"
            return

        async def everyone() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(_one(self.cfg, row, i, zero) for i, row in enumerate(self.rows)
                                               if len(row) > 4 and row[4])))

        self.records = asyncio.run(everyone())
        self.out_path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def join(self) -> list[dict[str, Any]]:
        if self.thread.is_alive() or self.thread.ident is not None:
            self.thread.join()
        return self.records
