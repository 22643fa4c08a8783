// One streaming chat completion, timed, read and counted: what chat-stream.js (closed loop) and
// open-loop.js (open loop) both send. k6 buffers the body, so the SSE stream is read once it ended.
//
// TTFT: k6 can only time the first byte. Through the collector the response head is held until the
// first token, so time to first byte IS time to first token; straight against vLLM the headers
// leave before the first token and the figure is meaningless.

import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';

const ttft = new Trend('llm_ttft', true);
const e2e = new Trend('llm_e2e', true);
const outputTokens = new Counter('llm_output_tokens');
const requestOk = new Rate('llm_request_ok');
const errors = new Counter('llm_errors');

// Usage from the final chunk, the content chunks (and their text, when asked: a conversation resends
// it), the finish reason, and whether the stream carried an error event or an unparseable chunk.
export function parseStream(body, keepText = false) {
  let usage = null;
  let streamError = null;
  let contentChunks = 0;
  let finish = null;
  let text = '';
  for (const line of body.split('\n')) {
    if (!line.startsWith('data:')) continue;
    const data = line.slice(5).trim();
    if (data === '[DONE]' || data === '') continue;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch (e) {
      streamError = 'bad_chunk';
      continue;
    }
    if (chunk.error) streamError = 'stream_error';
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      if (choice.delta && choice.delta.content) {
        contentChunks += 1;
        if (keepText) text += choice.delta.content;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return { usage, streamError, contentChunks, finish, text };
}

// The request's error kind ('' for success), as the per-request CSV and llm_errors{kind} name it.
// A natural end (finish "stop") with no text is an answer; anything else without content is not.
export function errorKind(res, parsed) {
  if (res.status === 0) {
    return res.error_code === 1050 ? 'timeout' : 'connection';
  }
  if (res.status >= 500) return 'http_5xx';
  if (res.status >= 400) return 'http_4xx';
  if (parsed.streamError) return parsed.streamError;
  if (!parsed.usage) return 'no_usage';
  if (parsed.contentChunks === 0 && parsed.finish !== 'stop') return 'empty_stream';
  return '';
}

// POSTs `body` (the request's JSON text) to cfg.target's chat endpoint and records the llm_* metrics.
// Returns the per-request record's measured fields, and the answer's text when keepText.
export function chatRequest(cfg, body, keepText = false) {
  const headers = { 'Content-Type': 'application/json' };
  if (cfg.api_key) headers.Authorization = `Bearer ${cfg.api_key}`;
  const res = http.post(`${cfg.target}/v1/chat/completions`, body, {
    headers,
    timeout: `${cfg.request_timeout_s}s`,
    tags: { name: 'chat_stream' },
  });
  const t = res.timings;
  const ttftMs = t.blocked + t.connecting + t.tls_handshaking + t.sending + t.waiting;
  const totalMs = ttftMs + t.receiving;
  const parsed = res.status === 200 ? parseStream(res.body || '', keepText)
    : { usage: null, streamError: null, contentChunks: 0, finish: null, text: '' };
  const kind = errorKind(res, parsed);
  const tokens = parsed.usage ? parsed.usage.completion_tokens : 0;
  requestOk.add(kind === '');
  if (kind === '') {
    ttft.add(ttftMs);
    e2e.add(totalMs);
    outputTokens.add(tokens);
  } else {
    errors.add(1, { kind });
  }
  return {
    ttftMs,
    totalMs,
    status: res.status,
    outputTokens: tokens,
    promptTokens: parsed.usage ? parsed.usage.prompt_tokens : 0,
    finish: parsed.finish,
    error: kind,
    text: parsed.text,
  };
}
