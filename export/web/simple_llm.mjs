// simple-llm's decoding loop for onnxruntime's JavaScript API: onnxruntime-web in a browser,
// onnxruntime-node in the tests. It follows gpt/generation.py rule for rule, so a model exported
// by `python -m export` generates here what it generates in Python:
//
// - Context: when prompt + output would pass max_seq_len, the model keeps the last 3/4 of its
//   context (at least one token), rebuilds its cache from them (positions restart at 0) and goes
//   on one token at a time.
// - Choosing a token: the repetition penalty (CTRL-style, over the prompt and the output), then
//   greedy (argmax, the first of equal logits) or: temperature, top-k (exactly k, ties by index),
//   top-p (the smallest set of top tokens whose probability reaches p), min-p (tokens at least
//   min_p times as likely as the top one), then a draw from what is left.
//   The draws use this file's seeded generator, not torch's: with a seed, sampling is reproducible
//   here and follows the same distribution as in Python, but not the same draws.
// - Text: generation ends before end-of-text or a stop string; a piece is held back while it ends
//   inside a multi-byte character or could be the start of a stop string.

export const SAMPLING_DEFAULTS = Object.freeze({
  maxNewTokens: 100,
  doSample: false,
  temperature: 1.0,
  topK: null,
  topP: null,
  minP: null,
  repetitionPenalty: 1.0,
  stopStrings: [],
  seed: null,
});

/** The sampling settings, checked by gpt.SamplingConfig's rules (an Error names the bad one). */
export function samplingConfig(options = {}) {
  const s = { ...SAMPLING_DEFAULTS, ...options };
  const isInt = (v) => Number.isInteger(v);
  if (!isInt(s.maxNewTokens) || s.maxNewTokens < 0) throw new Error(`maxNewTokens must be an integer >= 0, got ${s.maxNewTokens}`);
  if (!(s.temperature >= 0)) throw new Error(`temperature must be >= 0, got ${s.temperature}`);
  if (s.topK !== null && (!isInt(s.topK) || s.topK < 1)) throw new Error(`topK must be an integer >= 1, got ${s.topK}`);
  if (s.topP !== null && !(s.topP > 0 && s.topP <= 1)) throw new Error(`topP must be in (0, 1], got ${s.topP}`);
  if (s.minP !== null && !(s.minP > 0 && s.minP <= 1)) throw new Error(`minP must be in (0, 1], got ${s.minP}`);
  if (!(s.repetitionPenalty > 0)) throw new Error(`repetitionPenalty must be > 0, got ${s.repetitionPenalty}`);
  return Object.freeze({ ...s, greedy: !s.doSample || s.temperature === 0 });
}

/** A seeded generator of floats in [0, 1) (mulberry32); a random seed when `seed` is null. A seed is
 * any integer from 0 to 2**63 - 1 (the web app's range), as a number or a BigInt (exact above 2**53):
 * its high 32 bits are folded into the low ones (the generator's state is 32 bits), so seeds below
 * 2**32 are used as they are. */
export function seededRandom(seed) {
  let state;
  if (seed === null || seed === undefined) state = Math.floor(Math.random() * 2 ** 32) >>> 0;
  else {
    const big = BigInt(seed);
    if (big < 0n || big >= 2n ** 63n) throw new Error(`seed must be an integer from 0 to 2**63 - 1, got ${seed}`);
    state = (Number(big & 0xffffffffn) ^ Math.imul(Number(big >> 32n), 0x9e3779b1)) >>> 0;
  }
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The logits after the repetition penalty: seen tokens' logits divided by it (multiplied when negative). */
export function applyRepetitionPenalty(logits, seen, penalty) {
  const out = Float64Array.from(logits);
  if (penalty === 1.0) return out;
  for (const token of seen) out[token] = out[token] > 0 ? out[token] / penalty : out[token] * penalty;
  return out;
}

/** The logits a sampling draw is made from: -Infinity for every token the filters drop. */
export function filteredLogits(logits, s) {
  const x = Float64Array.from(logits, (v) => v / s.temperature);
  const order = [...x.keys()].sort((a, b) => x[b] - x[a] || a - b); // most likely first, ties by index
  let kept = order;
  if (s.topK !== null) kept = kept.slice(0, s.topK);
  if (s.topP !== null) {
    const probs = softmax(kept.map((i) => x[i]));
    let before = 0; // probability mass strictly above each token
    const nucleus = [];
    for (let r = 0; r < kept.length && before < s.topP; r++) {
      nucleus.push(kept[r]);
      before += probs[r];
    }
    kept = nucleus;
  }
  if (s.minP !== null) {
    const threshold = x[kept[0]] + Math.log(s.minP);
    kept = kept.filter((i) => x[i] >= threshold);
  }
  const out = new Float64Array(x.length).fill(-Infinity);
  for (const i of kept) out[i] = x[i];
  return out;
}

/** The next token: greedy or a draw (see the header), from one position's logits. */
export function chooseToken(logits, seen, s, random) {
  const x = applyRepetitionPenalty(logits, seen, s.repetitionPenalty);
  if (s.greedy) return argmax(x);
  const probs = softmax(filteredLogits(x, s));
  let u = random();
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i];
    if (u < 0) return i;
  }
  return argmax(probs); // rounding left a sliver: the most likely token
}

let taskChannel = null; // one channel for every call: a new one per call cost S a tenth of its speed
const waiting = []; // the resolvers of the calls whose message is on its way

/** A new task: lets the page paint and handle clicks (Stop) between decode steps, which onnxruntime-web
 * otherwise runs back to back on the main thread. MessageChannel, unlike setTimeout, adds no 4 ms clamp. */
function nextTask() {
  if (taskChannel === null) {
    taskChannel = new MessageChannel();
    taskChannel.port1.onmessage = () => {
      waiting.shift()();
      if (waiting.length === 0) taskChannel.port1.unref?.(); // Node: an idle channel lets the process end
    };
  }
  taskChannel.port1.ref?.();
  return new Promise((resolve) => {
    waiting.push(resolve);
    taskChannel.port2.postMessage(null);
  });
}

function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

function softmax(x) {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  const e = Array.from(x, (v) => (v === -Infinity ? 0 : Math.exp(v - max)));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/**
 * An exported model behind onnxruntime's JavaScript API. `ort` is the onnxruntime module,
 * `session` an InferenceSession of the export's graph, `config` its config.json values.
 */
export class OnnxModel {
  constructor(ort, session, config) {
    this.ort = ort;
    this.session = session;
    this.numLayers = config.num_layers;
    this.numHeads = config.num_heads;
    this.headSize = config.head_size ?? config.emb_size / config.num_heads;
    this.maxSeqLen = config.max_seq_len;
    this.vocabSize = config.vocab_size;
    const past = session.inputMetadata?.find?.((m) => m.name === "past_key_values.0.key");
    const capacity = past?.shape?.[2];
    this.capacity = Number.isInteger(capacity) ? capacity : null; // cache buffers, or growing pasts
    this.cacheType = past?.type ?? "float32"; // float16 in a CPU fp16 export (onnxruntime-web takes its bits as Uint16Array)
    this.yieldEveryMs = 16; // generateTokens lets other tasks run (paint, clicks, messages) this often; 0: every token
  }

  /** Free the session's memory (the model cannot run after). */
  release() {
    return this.session.release();
  }

  /** One forward pass: the last position's logits (Float32Array) and the next call's past. */
  async step(ids, past, pastLength, firstPosition) {
    const { ort } = this;
    const n = ids.length;
    const int64 = (values) => BigInt64Array.from(values, (v) => BigInt(v));
    const feeds = {
      input_ids: new ort.Tensor("int64", int64(ids), [1, n]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(pastLength + n).fill(1n), [1, pastLength + n]),
      position_ids: new ort.Tensor("int64", int64(ids.map((_, i) => firstPosition + i)), [1, n]),
    };
    const cache = past ?? this.emptyPast();
    for (let layer = 0; layer < this.numLayers; layer++) {
      feeds[`past_key_values.${layer}.key`] = cache[2 * layer];
      feeds[`past_key_values.${layer}.value`] = cache[2 * layer + 1];
    }
    const out = await this.session.run(feeds);
    const presents = [];
    for (let layer = 0; layer < this.numLayers; layer++) {
      presents.push(out[`present.${layer}.key`], out[`present.${layer}.value`]);
    }
    const logits = out.logits.data;
    return { logits: logits.slice((n - 1) * this.vocabSize, n * this.vocabSize), past: presents };
  }

  emptyPast() {
    const length = this.capacity ?? 0;
    const shape = [1, this.numHeads, length, this.headSize];
    const size = this.numHeads * length * this.headSize;
    const Data = this.cacheType === "float16" ? Uint16Array : Float32Array; // zero bits are 0.0 in both
    return Array.from({ length: 2 * this.numLayers }, () => new this.ort.Tensor(this.cacheType, new Data(size), shape));
  }

  /** Yield each new token id of the continuation of `promptIds` (stop tokens end it, unyielded);
   * `shouldStop()`, asked before every step, ends it at once when true. */
  async *generateTokens(promptIds, sampling, stopTokens = [], shouldStop = null) {
    const s = samplingConfig(sampling);
    if (promptIds.length === 0) throw new Error("the prompt must hold at least one token");
    const random = seededRandom(s.seed);
    const keep = Math.max(1, Math.floor((this.maxSeqLen * 3) / 4));
    const tokens = [...promptIds];
    const seen = new Set(s.repetitionPenalty === 1.0 ? [] : promptIds);
    let start = 0;
    let past = null;
    let position = 0;
    let yielded = performance.now();
    for (let i = 0; i < s.maxNewTokens; i++) {
      if (performance.now() - yielded >= this.yieldEveryMs) {
        await nextTask(); // about once a frame on a page
        yielded = performance.now();
      }
      if (shouldStop?.()) return;
      const end = tokens.length;
      let result;
      if (past === null || end - start > this.maxSeqLen) {
        start = end > this.maxSeqLen ? Math.max(0, end - keep) : 0;
        result = await this.step(tokens.slice(start, end), null, 0, 0); // positions restart at 0
        position = end - start - 1;
      } else {
        position += 1;
        result = await this.step([tokens[end - 1]], past, end - 1 - start, position);
      }
      past = result.past;
      const token = chooseToken(result.logits, seen, s, random);
      if (stopTokens.includes(token)) return;
      tokens.push(token);
      if (s.repetitionPenalty !== 1.0) seen.add(token);
      yield token;
    }
  }
}

/**
 * Stream the continuation of `prompt` as text pieces, each final when yielded (as
 * GenerationMixin.stream_text): `tokenizer` is @huggingface/tokenizers' Tokenizer of the
 * export's tokenizer.json, `eosId` its end-of-text id; an empty prompt starts a new document;
 * `onToken` sees every generated token id (e.g. to count tokens/s); `shouldStop()`, asked before
 * every token, ends the stream (with the text so far) when true.
 */
export async function* streamText(model, tokenizer, eosId, prompt, sampling = {}, onToken = null, shouldStop = null) {
  const stops = (sampling.stopStrings ?? []).filter((x) => x);
  const longest = Math.max(0, ...stops.map((x) => x.length));
  let ids = prompt ? tokenizer.encode(prompt, { add_special_tokens: false }).ids : [];
  if (ids.length === 0) ids = [eosId];
  const generated = [];
  let emitted = 0;
  let text = "";
  for await (const token of model.generateTokens(ids, sampling, [eosId], shouldStop)) {
    onToken?.(token);
    generated.push(token);
    text = tokenizer.decode(generated);
    if (text.endsWith("\ufffd")) continue; // an incomplete UTF-8 sequence: wait for its next bytes
    const cut = findStop(text, stops, Math.max(0, emitted - longest));
    if (cut !== null) {
      if (cut > emitted) yield text.slice(emitted, cut);
      return;
    }
    const safe = text.length - heldBack(text, stops);
    if (safe > emitted) {
      yield text.slice(emitted, safe);
      emitted = safe;
    }
  }
  if (text.length > emitted) yield text.slice(emitted);
}

function findStop(text, stops, from) {
  const found = stops.map((x) => text.indexOf(x, from)).filter((i) => i >= 0);
  return found.length ? Math.min(...found) : null;
}

function heldBack(text, stops) {
  let best = 0;
  for (const stop of stops) {
    for (let size = Math.min(stop.length - 1, text.length); size > best; size--) {
      if (text.endsWith(stop.slice(0, size))) {
        best = size;
        break;
      }
    }
  }
  return best;
}
