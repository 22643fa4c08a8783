"""The stream scanner: whole events forwarded unchanged, usage cut out only when asked, TTFT at
the first generated content, finish reasons and usage read, however the bytes are split."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.sse import StreamScanner


def event(payload: Any, compact: bool = True) -> bytes:
    separators = (",", ":") if compact else (", ", ": ")
    return b"data: " + json.dumps(payload, separators=separators).encode() + b"\n\n"


def chat_chunk(content: str | None, finish: str | None = None, role: bool = False, compact: bool = True) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {"content": content}
    return event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, compact)


def usage_event(compact: bool = True) -> bytes:
    return event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [],
                  "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}, compact)


USAGE = usage_event()
DONE = b"data: [DONE]\n\n"
# Content that looks like the keys the scanner searches for must not fool it.
TRICKY = 'say "usage":{ and "finish_reason":"stop" and {"error": here\n\n'


def chat_stream(compact: bool = True) -> list[bytes]:
    return [chat_chunk(None, role=True, compact=compact), chat_chunk("Hel", compact=compact),
            chat_chunk(TRICKY, compact=compact), chat_chunk("lo", "length", compact=compact),
            usage_event(compact), DONE]


CHAT_STREAM = chat_stream()


def run(scanner: StreamScanner, pieces: list[bytes]) -> bytes:
    out = b"".join(scanner.feed(piece, float(i)) for i, piece in enumerate(pieces, start=1))
    return out + scanner.flush()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_one_event_per_read_is_forwarded_without_change_and_metered() -> None:
    gaps: list[float] = []
    scanner = StreamScanner(chat=True, strip_usage=False, observe_gap=gaps.append)
    out = run(scanner, CHAT_STREAM)
    assert out == b"".join(CHAT_STREAM)
    assert scanner.first_token_at == 2.0  # the role chunk (read 1) carries no generated text
    assert gaps == [1.0, 1.0]  # inter-token gaps start after the first token (reads 3 and 4)
    assert scanner.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert scanner.finish_reasons == ["length"]
    assert scanner.done and scanner.error is None
    assert scanner.response_model == "m"


def test_usage_event_is_cut_out_when_the_client_did_not_ask_for_it() -> None:
    scanner = StreamScanner(chat=True, strip_usage=True)
    out = run(scanner, CHAT_STREAM)
    assert out == b"".join(piece for piece in CHAT_STREAM if piece != USAGE)
    assert scanner.usage is not None and scanner.usage["completion_tokens"] == 3


def test_usage_on_a_chunk_with_choices_is_kept() -> None:
    # continuous usage stats: usage rides on content chunks; those are never cut.
    chunk = event({"model": "m", "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    scanner = StreamScanner(chat=True, strip_usage=True)
    assert run(scanner, [chunk, chunk, DONE]) == chunk + chunk + DONE
    assert scanner.usage == {"prompt_tokens": 1, "completion_tokens": 1}


def test_completions_stream_first_token_and_finish() -> None:
    def text_chunk(text: str, finish: str | None = None) -> bytes:
        return event({"model": "m", "choices": [{"index": 0, "text": text, "finish_reason": finish}]})

    scanner = StreamScanner(chat=False, strip_usage=True)
    out = run(scanner, [text_chunk(""), text_chunk("a"), text_chunk("b", "stop"), USAGE, DONE])
    assert scanner.first_token_at == 2.0
    assert scanner.finish_reasons == ["stop"]
    assert USAGE not in out and scanner.usage is not None


def test_error_event_after_first_token_is_recorded_and_forwarded() -> None:
    error = event({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
    scanner = StreamScanner(chat=True, strip_usage=False)
    out = run(scanner, [chat_chunk("a"), error, DONE])
    assert error in out
    assert scanner.error == {"message": "engine died", "type": "InternalServerError", "code": 500}


def test_error_event_before_first_token_is_seen_before_anything_is_sent() -> None:
    scanner = StreamScanner(chat=True, strip_usage=False)
    scanner.feed(event({"error": {"message": "bad", "code": 400}}), 1.0)
    assert scanner.first_token_at is None and scanner.error is not None


def test_unterminated_bytes_are_bounded() -> None:
    scanner = StreamScanner(chat=True, strip_usage=False)
    blob = b"x" * (1 << 20)
    assert scanner.feed(blob, 1.0) == b""
    assert scanner.feed(b"y", 2.0) == blob + b"y"  # over the bound: passed on rather than held


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), strip=st.booleans(),
       capture=st.booleans(), compact=st.booleans())
def test_any_split_of_the_stream_gives_the_same_result(cuts: list[int], strip: bool, capture: bool,
                                                       compact: bool) -> None:
    stream = chat_stream(compact)
    data = b"".join(stream)
    gaps: list[float] = []
    scanner = StreamScanner(chat=True, strip_usage=strip, capture_content=capture, observe_gap=gaps.append)
    out = run(scanner, split(data, cuts))
    assert len(gaps) == 2 and min(gaps) >= 0  # three content chunks: two gaps, however they arrived
    expected = data.replace(stream[4], b"") if strip else data
    assert out == expected
    assert scanner.usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert scanner.finish_reasons == ["length"]
    assert scanner.error is None and scanner.done
    assert scanner.first_token_at is not None
    if capture:
        assert "".join(scanner.completion_text) == "Hel" + TRICKY + "lo"


def test_pass_through_counts_content_and_leaves_the_rest_to_feed() -> None:
    """After the first token a content chunk (even one whose text looks like the keys) passes in its
    framing, only counted; usage, a finish reason, an error, [DONE] or a pending partial event never do."""
    gaps: list[float] = []
    scanner = StreamScanner(chat=True, strip_usage=True, observe_gap=gaps.append)
    assert not scanner.pass_through(chat_chunk("Hel"), 1.0)  # before the first token: parsed
    scanner.feed(chat_chunk(None, role=True) + chat_chunk("Hel"), 1.0)
    tricky = chat_chunk(TRICKY)
    assert scanner.pass_through(b"%x\r\n%s\r\n" % (len(tricky), tricky), 2.0)
    assert scanner.content_chunks == 2 and gaps == [1.0]
    for event_bytes in (USAGE, chat_chunk("lo", "length"), chat_chunk("lo", "length", compact=False), DONE,
                        event({"error": {"message": "x", "code": 500}})):
        assert not scanner.pass_through(event_bytes, 3.0)
    assert scanner.feed(chat_chunk("lo")[:20], 3.0) == b""
    assert not scanner.pass_through(chat_chunk("x"), 3.0)  # a partial event is pending
    assert scanner.usage is None and scanner.finish_reasons == [] and scanner.error is None
    capturing = StreamScanner(chat=True, strip_usage=False, capture_content=True)
    capturing.feed(chat_chunk("Hel"), 1.0)
    assert not capturing.pass_through(chat_chunk("lo"), 2.0)  # captured text needs each event parsed
