"""Metering of an OpenAI-style SSE stream as it passes, with as little work per chunk as possible.

The scanner forwards whole events only (so the client never sees half an event and the usage event
can be cut out). In the common case an upstream read ends on an event boundary and the bytes are
forwarded as they are: no copy. Until the first token it parses each event (a handful of small
ones); after it, it only counts and searches bytes (C-level `count`/`find`) and parses just the
rare events it needs: the usage event, an error event, none else. JSON keys can be matched as bytes
safely: inside a JSON string every quote is escaped, so `"usage":` only ever matches a real key
(compact or not: whitespace after the colon is skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EVENT_END = b"\n\n"
DONE = b"data: [DONE]"
USAGE_KEY = b'"usage":'
FINISH_KEY = b'"finish_reason":'
# "finish_reason":null is in every chunk: only these (compact or not) announce a real one.
FINISH_VALUE_HINTS = (b'"finish_reason":"', b'"finish_reason": "')
ERROR_KEY = b'"error":'
CHAT_CHUNK_KEY = b'"delta":'
COMPLETION_CHUNK_KEY = b'"text":'
JSON_SPACE = b" \t\r\n"
# An upstream that never ends an event must not make the scanner hold unbounded bytes.
MAX_PENDING_BYTES = 1 << 20


@dataclass
class StreamScanner:
    chat: bool
    strip_usage: bool
    capture_content: bool = False
    # Called with each inter-token gap (seconds): chunks arriving in one read get the gap, then 0.0s.
    observe_gap: Callable[[float], None] | None = None

    first_token_at: float | None = None
    usage: dict[str, Any] | None = None
    finish_reasons: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    done: bool = False
    response_model: str | None = None
    response_id: str | None = None
    content_chunks: int = 0
    completion_text: list[str] = field(default_factory=list)
    _pending: bytes = b""
    _last_token_at: float = 0.0

    def feed(self, data: bytes, now: float) -> bytes:
        """Bytes to forward to the client now (whole events), from the next upstream read."""
        buf = self._pending + data if self._pending else data
        end = buf.rfind(EVENT_END)
        if end < 0:
            if len(buf) > MAX_PENDING_BYTES:
                self._pending = b""
                return buf
            self._pending = buf
            return b""
        end += len(EVENT_END)
        if end < len(buf):
            self._pending = buf[end:]
            buf = buf[:end]
        else:
            self._pending = b""
        if self.first_token_at is None or self.capture_content:
            return self._parse_events(buf, now)
        return self._scan(buf, now)

    def pass_through(self, framed: bytes, now: float) -> bool:
        """Meter whole events read in their HTTP chunked framing (`framed`: complete chunks, each ending
        an event) when they can reach the client as they are: after the first token, nothing pending,
        no content captured, and nothing in them the scanner must act on (usage, an error, a finish
        reason, [DONE]): content chunks are only counted. False: feed() them instead (de-chunked)."""
        if (self._pending or self.first_token_at is None or self.capture_content or USAGE_KEY in framed
                or ERROR_KEY in framed or DONE in framed or FINISH_VALUE_HINTS[0] in framed
                or FINISH_VALUE_HINTS[1] in framed):
            return False
        chunks = framed.count(CHAT_CHUNK_KEY if self.chat else COMPLETION_CHUNK_KEY)
        if chunks:
            self.content_chunks += chunks
            self._gaps(now, chunks)
        return True

    def flush(self) -> bytes:
        """What is left at the end of the stream (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        return rest

    # --- fast path: after the first token -------------------------------------------------------

    def _scan(self, buf: bytes, now: float) -> bytes:
        chunks = buf.count(CHAT_CHUNK_KEY if self.chat else COMPLETION_CHUNK_KEY)
        if chunks:
            self.content_chunks += chunks
            self._gaps(now, chunks)
        if FINISH_VALUE_HINTS[0] in buf or FINISH_VALUE_HINTS[1] in buf:
            self._note_finish_reasons(buf)
        if USAGE_KEY in buf:
            buf = self._take_usage(buf)
        if ERROR_KEY in buf:
            for at in _values_of(buf, ERROR_KEY, b"{"):
                event = self._event_payload(buf, at)
                if isinstance(event, dict) and "error" in event:
                    self._note_error(event)
        if DONE in buf:
            self.done = True
        return buf

    def _gaps(self, now: float, chunks: int) -> None:
        observe = self.observe_gap
        if observe is not None:
            observe(now - self._last_token_at)
            for _ in range(chunks - 1):
                observe(0.0)  # arrived together: the client saw no gap between them
        self._last_token_at = now

    def _note_finish_reasons(self, buf: bytes) -> None:
        for at in _values_of(buf, FINISH_KEY, b'"'):
            self.finish_reasons.append(buf[at + 1:buf.find(b'"', at + 1)].decode(errors="replace"))

    def _take_usage(self, buf: bytes) -> bytes:
        cut: list[tuple[int, int]] = []
        for at in _values_of(buf, USAGE_KEY, b"{"):
            start = buf.rfind(EVENT_END, 0, at)
            start = 0 if start < 0 else start + len(EVENT_END)
            end = buf.find(EVENT_END, at) + len(EVENT_END)
            event = self._decode(buf[start:end])
            if isinstance(event, dict) and isinstance(event.get("usage"), dict):
                self.usage = event["usage"]
                # The usage-only event (no choices) was added for the collector: cut it out.
                if self.strip_usage and not event.get("choices"):
                    cut.append((start, end))
        if not cut:
            return buf
        kept, position = [], 0
        for start, end in cut:
            kept.append(buf[position:start])
            position = end
        kept.append(buf[position:])
        return b"".join(kept)

    @staticmethod
    def _event_payload(buf: bytes, at: int) -> Any:
        start = buf.rfind(EVENT_END, 0, at)
        start = 0 if start < 0 else start + len(EVENT_END)
        end = buf.find(EVENT_END, at)
        return StreamScanner._decode(buf[start:end if end >= 0 else len(buf)])

    # --- slow path: each event parsed (before the first token, or when capturing content) --------

    def _parse_events(self, buf: bytes, now: float) -> bytes:
        kept: list[bytes] = []
        changed = False
        chunks = 0
        before_first = self.first_token_at is None
        for raw in buf.split(EVENT_END)[:-1]:
            event = self._decode(raw)
            if event is DONE:
                self.done = True
            elif isinstance(event, dict):
                if self._note_event(event, now):
                    chunks += 1
                if self.strip_usage and isinstance(event.get("usage"), dict) and not event.get("choices"):
                    changed = True
                    continue
            kept.append(raw)
        # The first token is timed as TTFT; inter-token latency starts after it.
        if before_first and self.first_token_at is not None:
            chunks -= 1
        if chunks > 0:
            self._gaps(now, chunks)
        if not changed:
            return buf
        return b"".join(raw + EVENT_END for raw in kept)

    def _note_event(self, event: dict[str, Any], now: float) -> bool:
        """Record what one parsed event says; True when it carries generated output."""
        if "error" in event:
            self._note_error(event)
            return False
        if self.response_model is None and isinstance(event.get("model"), str):
            self.response_model = event["model"]
            self.response_id = event.get("id") if isinstance(event.get("id"), str) else None
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        generated = False
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finish_reasons.append(str(choice["finish_reason"]))
                generated = True
            text = self._choice_text(choice)
            if text:
                generated = True
                if self.capture_content:
                    self.completion_text.append(text)
            elif self.chat and isinstance(choice.get("delta"), dict) and choice["delta"].get("tool_calls"):
                generated = True
        if generated:
            self.content_chunks += 1
            if self.first_token_at is None:
                self.first_token_at = self._last_token_at = now
        return generated

    def _choice_text(self, choice: dict[str, Any]) -> str:
        if not self.chat:
            text = choice.get("text")
            return text if isinstance(text, str) else ""
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return ""
        for key in ("content", "reasoning_content", "reasoning"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                return value
        return ""

    def _note_error(self, event: Any) -> None:
        if isinstance(event, dict) and isinstance(event.get("error"), dict):
            self.error = event["error"]
        else:
            self.error = {"message": "malformed error event from upstream"}

    @staticmethod
    def _decode(raw: bytes) -> Any:
        """One SSE event's data as JSON; DONE for the terminator; None when it is not JSON data."""
        data = b"".join(
            line[5:].lstrip(b" ") for line in raw.strip(b"\n").split(b"\n") if line.startswith(b"data:")
        )
        if data == b"[DONE]":
            return DONE
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # deep nesting: not an event the collector reads
            return None


def _values_of(buf: bytes, key: bytes, first: bytes) -> list[int]:
    """Positions of the values of `key` in `buf` that start with the byte `first` (spaces skipped)."""
    found = []
    at = buf.find(key)
    while at >= 0:
        value = at + len(key)
        while value < len(buf) and buf[value] in JSON_SPACE:
            value += 1
        if buf[value:value + 1] == first:
            found.append(value)
        at = buf.find(key, value)
    return found
