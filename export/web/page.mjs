// The export's web page: loads the model beside it (see model.json) with onnxruntime-web and
// generates with simple_llm.mjs, the decoding loop of gpt/generation.py, both in a Web Worker
// (worker.mjs) so that the page never freezes. The web app's browser backend uses `loadFromFiles`,
// `generateText` and `samplingFrom` from here too (webapp/browser.py).
import * as ort from "onnxruntime-web";
import { Tokenizer } from "@huggingface/tokenizers";
import { OnnxModel, samplingConfig, streamText } from "./simple_llm.mjs";

const RUNTIME = JSON.parse(document.getElementById("simple-llm-runtime").textContent);

async function json(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url.pathname ?? url}: HTTP ${response.status}`);
  return response.json();
}

/** A runtime file from the CDN, checked against its integrity hash (code "runtime" when it cannot arrive). */
async function checkedFetch(url, integrity) {
  try {
    const response = await fetch(url, { integrity });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response;
  } catch (error) {  // code "runtime": the caller says what is missing and how to get it
    throw Object.assign(new Error(`${url}: ${error.message}`), { code: "runtime" });
  }
}

/** Set up onnxruntime-web: its WebAssembly from beside the page, or from the CDN with its integrity
 * hash; returns what a worker needs to load the same runtime (import maps do not reach workers, so
 * the CDN's modules go to it as blobs of their checked text). */
async function setUpRuntime() {
  ort.env.wasm.wasmPaths = new URL(RUNTIME.wasmPaths, document.baseURI).href; // relative to the page
  const runtime = { ort: new URL(import.meta.resolve("onnxruntime-web"), document.baseURI).href, glue: null, wasmPaths: ort.env.wasm.wasmPaths };
  if (RUNTIME.wasmIntegrity) {
    const url = new URL("ort-wasm-simd-threaded.wasm", ort.env.wasm.wasmPaths).href;
    ort.env.wasm.wasmBinary = await (await checkedFetch(url, RUNTIME.wasmIntegrity)).arrayBuffer();
    const integrity = JSON.parse(document.querySelector('script[type="importmap"]')?.textContent ?? "{}").integrity ?? {};
    const blob = async (address) => {
      const text = await (await checkedFetch(address, integrity[address])).text();
      return URL.createObjectURL(new Blob([text], { type: "text/javascript" }));
    };
    runtime.ort = await blob(runtime.ort);
    runtime.glue = await blob(new URL("ort-wasm-simd-threaded.mjs", ort.env.wasm.wasmPaths).href);
  }
  return runtime;
}

/** WebAssembly threads unless the page asks for others (`?threads=N`, in a cross-origin isolated
 * page: the server's COOP/COEP or Document-Isolation-Policy headers). onnxruntime-web fixes the count
 * when it loads, for prefill and decode alike; on 2 cores two threads prefilled 240 tokens 1.2-1.5x
 * faster (M, L) but decoded 0.6-0.9x as fast in a fresh page (S, M, L), and a first generation is
 * mostly decoding (docs/performance.md, "In the browser"). */
export const DEFAULT_THREADS = 1;

let spare = null; // {worker, threads}: a released model's worker, kept for the next model

/** The model in a Web Worker (worker.mjs), with OnnxModel's `step`, `generateTokens` and `release`:
 * the cache stays in the worker, token ids cross. A released model's worker loads the next model
 * (with the same thread count): its onnxruntime-web is compiled, and V8 has already optimized the
 * functions the last model ran hot. */
export class WorkerModel {
  constructor(worker, info, config) {
    this.worker = worker;
    this.threads = info.threads;
    this.capacity = info.capacity;
    this.vocabSize = config.vocab_size;
    this.calls = new Map(); // message id -> handler of the worker's answers
    this.nextId = 0;
    this.warmUpTokens = 0; // what the worker decoded to warm the model up after its load (worker.mjs)
    worker.onmessage = ({ data }) => (data.type === "warmed-up" ? (this.warmUpTokens = data.tokens) : this.calls.get(data.id)?.(data));
  }

  /** Load the graph at `graph` in the spare worker, or in a new one. */
  static async create(runtime, graph, config, threads) {
    const reused = spare?.threads === threads;
    const worker = reused ? spare.worker : new Worker(new URL("./worker.mjs", import.meta.url), { type: "module" });
    if (reused) spare = null;
    const loading = new Promise((resolve, reject) => {
      worker.onmessage = ({ data }) => (data.type === "result" ? resolve(data.value) : reject(Object.assign(new Error(data.message), { code: data.code })));
      worker.onerror = (event) => reject(new Error(event.message || "the model's worker could not start"));
    });
    const wasmBinary = !reused && ort.env.wasm.wasmBinary ? ort.env.wasm.wasmBinary.slice(0) : null;
    worker.postMessage({ id: 0, type: "load", runtime, graph, config, threads, wasmBinary });
    try {
      return new WorkerModel(worker, await loading, config);
    } catch (error) {
      worker.terminate();
      throw error;
    }
  }

  call(type, message = {}) {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      this.calls.set(id, (data) => {
        this.calls.delete(id);
        if (data.type === "result") resolve(data.value);
        else reject(Object.assign(new Error(data.message), { code: data.code }));
      });
      this.worker.postMessage({ id, type, ...message });
    });
  }

  /** The logits of the last position of `ids` from an empty cache (as OnnxModel.step's, for checks). */
  async step(ids, past = null) {
    if (past !== null) throw new Error("the worker's model steps from an empty cache only");
    return { logits: await this.call("step", { ids }) };
  }

  /** As OnnxModel.generateTokens: `shouldStop()` is asked before each token is handed on, and once
   * it is true no further token is, and the worker stops before its next step. */
  async *generateTokens(ids, sampling, stopTokens = [], shouldStop = null) {
    const id = ++this.nextId;
    const tokens = [];
    let finished = false;
    let failure = null;
    let wake = null;
    this.calls.set(id, (data) => {
      if (data.type === "token") tokens.push(data.token);
      else if (data.type === "result") finished = true;
      else failure = Object.assign(new Error(data.message), { code: data.code });
      wake?.();
    });
    this.worker.postMessage({ id, type: "generate", ids: [...ids], sampling: { ...sampling }, stopTokens: [...stopTokens] });
    try {
      for (;;) {
        if (shouldStop?.()) return;
        if (tokens.length) yield tokens.shift();
        else if (failure) throw failure;
        else if (finished) return;
        else await new Promise((resolve) => (wake = resolve));
      }
    } finally {
      if (!finished && !failure) this.worker.postMessage({ type: "stop", target: id });
      this.calls.delete(id);
    }
  }

  /** Free the session; the worker waits for the next model (or ends, when one already waits). */
  async release() {
    try {
      await this.call("release");
    } catch (error) {
      this.worker.terminate();
      throw error;
    }
    spare?.worker.terminate();
    spare = { worker: this.worker, threads: this.threads };
  }
}

/** The model, tokenizer and end-of-text id from the addresses of an export's files:
 * `{graph, config, tokenizer, tokenizerConfig}` (and `precision`, shown). */
export async function loadModel(urls) {
  const runtime = await setUpRuntime();
  const started = performance.now();
  const [config, tokenizerJson, tokenizerConfig] = await Promise.all([
    json(urls.config),
    json(urls.tokenizer),
    json(urls.tokenizerConfig),
  ]);
  const graph = new URL(String(urls.graph), document.baseURI).href;
  const threads = self.crossOriginIsolated && urls.threads ? urls.threads : DEFAULT_THREADS; // ?threads=N: a choice
  let model;
  if (typeof Worker === "function") model = await WorkerModel.create(runtime, graph, config, threads);
  else {
    ort.env.wasm.numThreads = threads;
    model = new OnnxModel(ort, await ort.InferenceSession.create(graph, { executionProviders: ["wasm"] }), config);
  }
  const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
  const eosId = tokenizerJson.added_tokens.find((t) => t.content === tokenizerConfig.eos_token).id;
  const isolated = Boolean(self.crossOriginIsolated); // threads need it: the server's COOP/COEP headers
  return { model, tokenizer, eosId, precision: urls.precision, threads, isolated, loadSeconds: (performance.now() - started) / 1000 };
}

const loaded = new Map(); // graph address -> the loading model, for loadFromFiles

/** The model from the files a web app hands over (Gradio file values: the graph, config.json,
 * tokenizer.json, tokenizer_config.json and web/model.json), loaded once per graph. A load that
 * fails is forgotten (the next call tries again); loading another graph releases the sessions of
 * the models it replaces. */
export async function loadFromFiles(files) {
  const urls = Object.fromEntries((files || []).map((f) => [f.orig_name, new URL(f.url, document.baseURI).href]));
  if (!urls["model.json"]) throw new Error("no model files");
  const info = await json(urls["model.json"]);
  const graph = urls[info.graph.split("/").pop()];
  if (!loaded.has(graph)) {
    const replaced = [...loaded.values()].map((previous) => previous.then((old) => old.model.release(), () => {}));
    loaded.clear();
    const model = { graph, config: urls["config.json"], tokenizer: urls["tokenizer.json"], tokenizerConfig: urls["tokenizer_config.json"] };
    const loading = Promise.all(replaced).then(() => loadModel({ ...model, precision: info.precision }));
    loaded.set(graph, loading);
    loading.catch(() => loaded.get(graph) === loading && loaded.delete(graph));
  }
  return loaded.get(graph);
}

/** The files of the export folder at `base` (its web/model.json names the graph the browser runs). */
async function folderUrls(base) {
  const page = await json(new URL("web/model.json", base));
  const url = (name) => new URL(name, base);
  return { graph: url(page.graph), config: url("config.json"), tokenizer: url("tokenizer.json"), tokenizerConfig: url("tokenizer_config.json"), precision: page.precision };
}

/** Sampling settings from the controls' values, where top-k 0, top-p 1 and min-p 0 mean off and
 * an empty seed draws one; stop strings one per line, with \\n and \\t for a newline and a tab. */
export function samplingFrom(v) {
  const topK = Number(v.topK);
  const topP = Number(v.topP);
  const minP = Number(v.minP);
  return samplingConfig({
    maxNewTokens: Number(v.maxNewTokens),
    doSample: v.mode === "sampling",
    temperature: Number(v.temperature),
    topK: topK > 0 ? topK : null,
    topP: topP < 1 ? topP : null,
    minP: minP > 0 ? minP : null,
    repetitionPenalty: Number(v.repetitionPenalty),
    stopStrings: String(v.stopStrings ?? "").split("\n").map((s) => s.replaceAll("\\n", "\n").replaceAll("\\t", "\t")).filter((s) => s),
    seed: v.seed === "" || v.seed === null || v.seed === undefined ? null : seedOf(v.seed),
  });
}

/** A seed from a control's value: an integer from 0 to 2**63 - 1 (the web app's range), exact. */
function seedOf(value) {
  const text = String(value).trim();
  if (!/^\d+$/.test(text) || BigInt(text) >= 2n ** 63n) throw new Error(`seed must be an integer from 0 to 2**63 - 1, got ${value}`);
  return BigInt(text);
}

function settings(doc) {
  const value = (id) => doc.getElementById(id).value;
  return samplingFrom({
    maxNewTokens: value("max-new-tokens"),
    mode: value("mode"),
    temperature: value("temperature"),
    topK: value("top-k"),
    topP: value("top-p"),
    minP: value("min-p"),
    repetitionPenalty: value("repetition-penalty"),
    stopStrings: value("stop-strings"),
    seed: value("seed"),
  });
}

/** Generate from `prompt` with a loaded model, calling `onText(textSoFar)` as pieces arrive and
 * stopping before the next token once `shouldStop()` says so: `{text, tokens, seconds}`. */
export async function generateText(loaded, prompt, sampling, onText, shouldStop = () => false, onToken = null) {
  const { model, tokenizer, eosId } = loaded;
  let text = "";
  let tokens = 0;
  const started = performance.now();
  const counted = (token) => {
    tokens += 1;
    onToken?.(token);
  };
  for await (const piece of streamText(model, tokenizer, eosId, prompt, sampling, counted, shouldStop)) {
    text += piece;
    onText(text);
  }
  return { text, tokens, seconds: (performance.now() - started) / 1000 };
}

/** Wire the page's controls; returns `{ready, generate, progress}` (the tests drive it through them
 * too; `progress()`: the tokens of the current or last generation so far).
 * `explain(error)` says what to do when the runtime's files could not be fetched (error.code "runtime"). */
export function mountPage(doc, base, explain = (error) => error.message) {
  const status = doc.getElementById("status");
  const output = doc.getElementById("output");
  const generateButton = doc.getElementById("generate");
  const stopButton = doc.getElementById("stop");
  let stopRequested = false;
  let tokens = 0;
  const show = (text, error = false) => {
    status.textContent = text;
    status.classList.toggle("error", error);
  };
  const threads = Math.min(Math.floor(Number(new URLSearchParams(doc.location.search).get("threads"))) || 0, 64);
  const ready = folderUrls(base).then((urls) => loadModel({ ...urls, threads: threads > 0 ? threads : null }));
  ready.then(
    (loaded) => {
      const isolation = loaded.isolated ? "cross-origin isolated" : "not cross-origin isolated";
      show(`Model loaded in ${loaded.loadSeconds.toFixed(1)} s (${loaded.precision}, ${loaded.threads} thread(s), ${isolation}). Ready.`);
      generateButton.disabled = false;
    },
    (error) => show(error.code === "runtime" ? explain(error) : `Could not load the model: ${error.message}`, true),
  );

  async function generate(prompt, sampling) {
    const loaded = await ready;
    stopRequested = false;
    tokens = 0;
    const onText = (text) => (output.textContent = prompt + text);
    return generateText(loaded, prompt, sampling, onText, () => stopRequested, () => (tokens += 1));
  }

  generateButton.addEventListener("click", async () => {
    generateButton.disabled = true;
    stopButton.disabled = false;
    try {
      const prompt = doc.getElementById("prompt").value;
      show("Generating…");
      const result = await generate(prompt, settings(doc));
      show(`Done: ${result.tokens} tokens in ${result.seconds.toFixed(2)} s (${(result.tokens / result.seconds).toFixed(1)} tokens/s)${stopRequested ? ", stopped" : ""}.`);
    } catch (error) {
      show(error.message, true);
    } finally {
      generateButton.disabled = false;
      stopButton.disabled = true;
    }
  });
  stopButton.addEventListener("click", () => {
    stopRequested = true;
  });
  return { ready, generate, ort, progress: () => ({ tokens }) };
}
