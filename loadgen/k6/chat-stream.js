// Closed-loop streaming chat load for one sweep step: a constant number of virtual users, each
// sending one streaming chat completion after the other. The step's settings come from a JSON
// file the orchestrator writes (LOADGEN_STEP_CONFIG); one JSON line per request goes to the console
// (run with --log-format=raw --console-output=FILE) for the per-request CSV.
//
// With a request mix (the config's `mix_rows`: [prompt_words, max_tokens, turns] rows drawn by
// loadgen/arrivals.py), each user's next request is the next row in turn across all users: a
// conversation of that many turns, retried as the mix says (chat-request.js: converse).
//
// The request itself (timing, reading, the llm_* metrics): chat-request.js.
import exec from 'k6/execution';
import { chatBody, chatRequest, converse, logRecord } from './chat-request.js';

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

function mixRequest() {
  const index = exec.scenario.iterationInTest;
  const [promptWords, maxTokens, turns] = cfg.mix_rows[index % cfg.mix_rows.length];
  converse(cfg, promptWords, maxTokens, turns, `[${cfg.run_id}-${index}] `, (turn, attempt, startMs, r) => {
    logRecord(cfg, startMs, r, { index, turn, attempt, max_tokens: maxTokens, finish_reason: r.finish });
  });
}

export default function () {
  if (cfg.mix_rows) {
    mixRequest();
    return;
  }
  // A distinct prefix per request keeps vLLM's prefix cache from turning long prompts into free ones.
  const nonce = `${exec.vu.idInTest}-${exec.vu.iterationInScenario}`;
  const messages = [{ role: 'user', content: `[${nonce}] ${cfg.prompt}` }];
  const startMs = Date.now();
  logRecord(cfg, startMs, chatRequest(cfg, chatBody(cfg, messages, cfg.max_tokens)));
}

export function handleSummary(data) {
  return { [cfg.summary_path]: JSON.stringify(data, null, 1) };
}
