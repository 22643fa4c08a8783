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
import { converse, logRecord } from './chat-request.js';

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

export default function () {
  const index = exec.scenario.iterationInTest;
  const [offsetMs, promptWords, maxTokens, turnsRaw, slowReader] = schedule[index];
  const zero = exec.scenario.startTime + cfg.start_delay_ms;
  // The schedule's zero for loadgen/slow_readers.py, which sends the slow readers' rows (k6 reads at full speed).
  if (index === 0) console.log(`zero_ms=${zero}`);
  if (slowReader) return;
  const due = zero + offsetMs;
  const now = Date.now();
  const taken = now - due; // > 0: no user was free to take this request before its instant
  if (taken > cfg.late_tolerance_ms) {
    dropped.add(1);
    const none = { ttftMs: 0, totalMs: 0, status: 0, outputTokens: 0, promptTokens: 0, error: 'dropped' };
    logRecord(cfg, due, none, {
      index, zero_ms: zero, scheduled_ms: due, late_ms: taken, max_tokens: maxTokens, dropped: true,
    });
    return;
  }
  if (due > now) sleep((due - now) / 1000);
  const late = Math.max(0, Date.now() - due);
  lateness.add(late);
  converse(cfg, promptWords, maxTokens, turnsRaw || 1, `[${cfg.run_id}-${index}] `, (turn, attempt, startMs, r) => {
    logRecord(cfg, startMs, r, {
      index, turn, attempt, zero_ms: zero, scheduled_ms: due, late_ms: turn === 0 && attempt === 0 ? late : 0,
      max_tokens: maxTokens, finish_reason: r.finish,
    });
  });
}

export function handleSummary(data) {
  return { [cfg.summary_path]: JSON.stringify(data, null, 1) };
}
