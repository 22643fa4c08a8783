// Closed-loop streaming chat load for one sweep step: a constant number of virtual users, each
// sending one streaming chat completion after the other. The step's settings come from a JSON
// file the orchestrator writes (LOADGEN_STEP_CONFIG); one JSON line per request goes to the console
// (run with --log-format=raw --console-output=FILE) for the per-request CSV.
//
// TTFT: k6 buffers the body, so it can only time the first byte. Through the collector the response
// head is held until the first token, so time to first byte IS time to first token; straight
// against vLLM the headers leave before the first token and the figure is meaningless.
import http from 'k6/http';
import exec from 'k6/execution';
import { Counter, Rate, Trend } from 'k6/metrics';

const cfg = JSON.parse(open(__ENV.LOADGEN_STEP_CONFIG));

export const options = {
  scenarios: {
    step: {
      executor: 'constant-vus',
      vus: cfg.vus,
      duration: `${cfg.duration_s}s`,
      // In-flight requests finish after the step so every request of the steady window is recorded.
      gracefulStop: `${cfg.request_timeout_s}s`,
    },
  },
  summaryTrendStats: ['min', 'med', 'avg', 'p(90)', 'p(95)', 'p(99)', 'max'],
  discardResponseBodies: false,
};

const ttft = new Trend('llm_ttft', true);
const e2e = new Trend('llm_e2e', true);
const outputTokens = new Counter('llm_output_tokens');
const requestOk = new Rate('llm_request_ok');
const errors = new Counter('llm_errors');

const headers = { 'Content-Type': 'application/json' };
if (cfg.api_key) headers.Authorization = `Bearer ${cfg.api_key}`;

function requestBody(nonce) {
  // A distinct prefix per request keeps vLLM's prefix cache from turning long prompts into free ones.
  return JSON.stringify({
    model: cfg.model,
    messages: [{ role: 'user', content: `[${nonce}] ${cfg.prompt}` }],
    max_tokens: cfg.max_tokens,
    stream: true,
    stream_options: { include_usage: true },
    ignore_eos: cfg.ignore_eos,
    temperature: 0,
  });
}

// Reads the SSE body: usage from the final chunk, and whether the stream carried an error event.
function parseStream(body) {
  let usage = null;
  let streamError = null;
  let contentChunks = 0;
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
      if (choice.delta && choice.delta.content) contentChunks += 1;
    }
  }
  return { usage, streamError, contentChunks };
}

function errorKind(res, parsed) {
  if (res.status === 0) {
    return res.error_code === 1050 ? 'timeout' : 'connection';
  }
  if (res.status >= 500) return 'http_5xx';
  if (res.status >= 400) return 'http_4xx';
  if (parsed.streamError) return parsed.streamError;
  if (!parsed.usage) return 'no_usage';
  if (parsed.contentChunks === 0) return 'empty_stream';
  return '';
}

export default function () {
  const nonce = `${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const startMs = Date.now();
  const res = http.post(`${cfg.target}/v1/chat/completions`, requestBody(nonce), {
    headers,
    timeout: `${cfg.request_timeout_s}s`,
    tags: { name: 'chat_stream' },
  });
  const t = res.timings;
  const ttftMs = t.blocked + t.connecting + t.tls_handshaking + t.sending + t.waiting;
  const totalMs = ttftMs + t.receiving;
  const parsed = res.status === 200 ? parseStream(res.body || '') : { usage: null, streamError: null, contentChunks: 0 };
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
  console.log(JSON.stringify({
    step: cfg.step,
    vu: exec.vu.idInTest,
    start_ms: startMs,
    ttft_ms: ttftMs,
    total_ms: totalMs,
    status: res.status,
    output_tokens: tokens,
    prompt_tokens: parsed.usage ? parsed.usage.prompt_tokens : 0,
    error: kind,
  }));
}

export function handleSummary(data) {
  return { [cfg.summary_path]: JSON.stringify(data, null, 1) };
}
