// Open-loop streaming chat load for one rate step: request i is sent at its scheduled instant (an
// arrival schedule drawn by loadgen/arrivals.py, Poisson or gamma gaps, with a fixed seed), whatever
// happened to the requests before it, so a slow server cannot slow its own arrivals (no coordinated
// omission). The scheduler is k6's shared-iterations executor: every idle virtual user takes the next
// request and sleeps until its instant. A request that no user was free to take until more than
// late_tolerance_ms after its instant (every user busy) is NOT sent late: it is counted as dropped
// (llm_dropped, and one record with error "dropped"), like the dropped_iterations of k6's
// arrival-rate executors. A user that took its request in time but woke late (k6 itself short of
// CPU) sends it, and the record says how late (late_ms).
//
// Settings come from LOADGEN_STEP_CONFIG (written by the sweep); the schedule from its
// schedule_path: one [offset_ms, prompt_words, max_tokens, turns] row per arrival. An arrival with
// more than one turn is a conversation: each turn resends the history (the earlier questions and
// the model's own answers) with a new question, think_time_s after the last answer, on the same
// virtual user. One JSON line per request (per turn) goes to the console (run with
// --log-format=raw --console-output=FILE).
import exec from 'k6/execution';
import { sleep } from 'k6';
import { SharedArray } from 'k6/data';
import { Counter, Trend } from 'k6/metrics';
import { chatRequest } from './chat-request.js';

const cfg = JSON.parse(open(__ENV.LOADGEN_STEP_CONFIG));
const schedule = new SharedArray('schedule', () => JSON.parse(open(cfg.schedule_path)));

export const options = {
  scenarios: {
    step: {
      executor: 'shared-iterations',
      vus: Math.max(1, Math.min(cfg.vus, cfg.requests)),
      iterations: cfg.requests,
      // The schedule's length, then every request (every turn of a conversation) still open may finish.
      maxDuration: `${Math.ceil(cfg.duration_s + cfg.tail_s)}s`,
    },
  },
  summaryTrendStats: ['min', 'med', 'avg', 'p(90)', 'p(95)', 'p(99)', 'max'],
  discardResponseBodies: false,
};

const lateness = new Trend('llm_send_late', true);
const dropped = new Counter('llm_dropped');
const vocabulary = cfg.vocabulary.split(' ');

function words(n, offset) {
  const out = new Array(n);
  for (let i = 0; i < n; i += 1) out[i] = vocabulary[(i + offset) % vocabulary.length];
  return out.join(' ');
}

function requestBody(messages, maxTokens) {
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

export default function () {
  const index = exec.scenario.iterationInTest;
  const [offsetMs, promptWords, maxTokens, turnsRaw, slowReader] = schedule[index];
  const turns = turnsRaw || 1;
  const zero = exec.scenario.startTime + cfg.start_delay_ms;
  // The schedule's zero for loadgen/slow_readers.py, which sends the slow readers' rows (k6 reads at full speed).
  if (index === 0) console.log(`zero_ms=${zero}`);
  if (slowReader) return;
  const due = zero + offsetMs;
  let now = Date.now();
  const taken = now - due; // > 0: no user was free to take this request before its instant
  if (taken > cfg.late_tolerance_ms) {
    dropped.add(1);
    console.log(JSON.stringify({
      step: cfg.step, vu: exec.vu.idInTest, index, zero_ms: zero, scheduled_ms: due, start_ms: due, late_ms: taken, ttft_ms: 0,
      total_ms: 0, status: 0, output_tokens: 0, prompt_tokens: 0, max_tokens: maxTokens, error: 'dropped',
      dropped: true,
    }));
    return;
  }
  if (due > now) {
    sleep((due - now) / 1000);
    now = Date.now();
  }
  const late = Math.max(0, now - due);
  lateness.add(late);
  // The system prompt is the same for every request (vLLM's prefix cache serves it); the nonce opens
  // the conversation's first question, so nothing after the system prompt is shared between conversations.
  const messages = [];
  if (cfg.system_prompt) messages.push({ role: 'system', content: cfg.system_prompt });
  for (let turn = 0; turn < turns; turn += 1) {
    if (turn > 0) {
      if (cfg.think_time_s > 0) sleep(cfg.think_time_s);
      now = Date.now();
    }
    const nonce = turn === 0 ? `[${cfg.run_id}-${index}] ` : '';
    messages.push({ role: 'user', content: `${nonce}${words(promptWords, turn * 7)}` });
    let answer = null;
    // A client that retries: after a failure of a kind in retry_on, the same request again after
    // retry_backoff_s, doubling each time (every attempt is a request the server sees: a retry storm
    // shows in the request counts).
    for (let attempt = 0; attempt <= cfg.retry_max; attempt += 1) {
      if (attempt > 0) {
        sleep(cfg.retry_backoff_s * 2 ** (attempt - 1));
        now = Date.now();
      }
      const result = send(index, turn, attempt, zero, due, now, turn === 0 && attempt === 0 ? late : 0, messages,
        maxTokens);
      if (result.kind === '') {
        answer = result.text;
        break;
      }
      if (!cfg.retry_on.includes(result.kind)) break;
    }
    if (answer === null) break; // a failed turn ends the conversation
    messages.push({ role: 'assistant', content: answer });
  }
}

function send(index, turn, attempt, zero, due, now, late, messages, maxTokens) {
  const r = chatRequest(cfg, requestBody(messages, maxTokens), true);
  console.log(JSON.stringify({
    step: cfg.step,
    vu: exec.vu.idInTest,
    index,
    turn,
    attempt,
    zero_ms: zero,
    scheduled_ms: due,
    start_ms: now,
    late_ms: late,
    ttft_ms: r.ttftMs,
    total_ms: r.totalMs,
    status: r.status,
    output_tokens: r.outputTokens,
    prompt_tokens: r.promptTokens,
    max_tokens: maxTokens,
    finish_reason: r.finish,
    error: r.error,
  }));
  return { kind: r.error, text: r.text };
}

export function handleSummary(data) {
  return { [cfg.summary_path]: JSON.stringify(data, null, 1) };
}
