// One streaming chat completion, timed, read and counted: what chat-stream.js (closed loop) and
// open-loop.js (open loop) both send. k6 buffers the body, so the SSE stream is read once it ended.
// And one drawn request of a mix (converse): its conversation's turns, each retried as the mix says.
//
// TTFT: k6 can only time the first byte. Through the collector the response head is held until the
// first token, so time to first byte IS time to first token; straight against vLLM the headers
// leave before the first token and the figure is meaningless.

import exec from 'k6/execution';
import http from 'k6/http';
import { sleep } from 'k6';
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

// Writes one request's JSON line to the console (the per-request CSV): its step, user and start,
// `fields` (what the script knows of it: draw, turn, attempt, schedule), and what chatRequest measured.
export function logRecord(cfg, startMs, r, fields = {}) {
  console.log(JSON.stringify({
    step: cfg.step,
    vu: exec.vu.idInTest,
    ...fields,
    start_ms: startMs,
    ttft_ms: r.ttftMs,
    total_ms: r.totalMs,
    status: r.status,
    output_tokens: r.outputTokens,
    prompt_tokens: r.promptTokens,
    error: r.error,
  }));
}

function words(cfg, n, offset) {
  const vocabulary = cfg.vocabulary.split(' ');
  const out = new Array(n);
  for (let i = 0; i < n; i += 1) out[i] = vocabulary[(i + offset) % vocabulary.length];
  return out.join(' ');
}

// A streaming chat request's JSON text: the usage comes in the last chunk, greedy decoding.
export function chatBody(cfg, messages, maxTokens) {
  return JSON.stringify({
    model: cfg.model,
    messages,
    max_tokens: maxTokens,
    stream: true,
    stream_options: { include_usage: true },
    ignore_eos: cfg.ignore_eos,
    temperature: 0,
  });
}

// One drawn request of a mix (a row of loadgen/arrivals.py: prompt_words, max_tokens, turns): a
// conversation of `turns` turns, each resending the history (the earlier questions and the model's own
// answers) with a new question, think_time_s after the last answer. The system prompt is the same for
// every request (vLLM's prefix cache serves it); `nonce` opens the first question, so nothing after the
// system prompt is shared between conversations. A failed turn of a kind in retry_on is sent again after
// retry_backoff_s, doubling (every attempt is a request the server sees: a retry storm shows in the
// request counts); a turn that still failed ends the conversation. `record(turn, attempt, startMs, r)`
// writes each attempt's line.
export function converse(cfg, promptWords, maxTokens, turns, nonce, record) {
  const messages = [];
  if (cfg.system_prompt) messages.push({ role: 'system', content: cfg.system_prompt });
  for (let turn = 0; turn < turns; turn += 1) {
    if (turn > 0 && cfg.think_time_s > 0) sleep(cfg.think_time_s);
    messages.push({ role: 'user', content: `${turn === 0 ? nonce : ''}${words(cfg, promptWords, turn * 7)}` });
    let answer = null;
    for (let attempt = 0; attempt <= cfg.retry_max; attempt += 1) {
      if (attempt > 0) sleep(cfg.retry_backoff_s * 2 ** (attempt - 1));
      const startMs = Date.now();
      const r = chatRequest(cfg, chatBody(cfg, messages, maxTokens), true);
      record(turn, attempt, startMs, r);
      if (r.error === '') {
        answer = r.text;
        break;
      }
      if (!cfg.retry_on.includes(r.error)) break;
    }
    if (answer === null) return;
    messages.push({ role: 'assistant', content: answer });
  }
}
