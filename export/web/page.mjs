// The export's web page: loads the model beside it (see model.json) with onnxruntime-web and
// generates with simple_llm.mjs, the decoding loop of gpt/generation.py.
import * as ort from "onnxruntime-web";
import { Tokenizer } from "@huggingface/tokenizers";
import { OnnxModel, samplingConfig, streamText } from "./simple_llm.mjs";

const RUNTIME = JSON.parse(document.getElementById("simple-llm-runtime").textContent);

async function json(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url.pathname ?? url}: HTTP ${response.status}`);
  return response.json();
}

/** Set up onnxruntime-web: its WebAssembly from beside the page, or from the CDN with its integrity hash. */
async function setUpRuntime() {
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.wasmPaths = new URL(RUNTIME.wasmPaths, import.meta.url).href;
  if (RUNTIME.wasmIntegrity) {
    const url = new URL("ort-wasm-simd-threaded.wasm", ort.env.wasm.wasmPaths);
    const response = await fetch(url, { integrity: RUNTIME.wasmIntegrity });
    ort.env.wasm.wasmBinary = await response.arrayBuffer();
  }
}

/** The model, tokenizer and end-of-text id of the export folder at `base`. */
export async function loadModel(base) {
  await setUpRuntime();
  const started = performance.now();
  const [config, page, tokenizerJson, tokenizerConfig] = await Promise.all([
    json(new URL("config.json", base)),
    json(new URL("web/model.json", base)),
    json(new URL("tokenizer.json", base)),
    json(new URL("tokenizer_config.json", base)),
  ]);
  const session = await ort.InferenceSession.create(new URL(page.graph, base).href, { executionProviders: ["wasm"] });
  const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
  const eosId = tokenizerJson.added_tokens.find((t) => t.content === tokenizerConfig.eos_token).id;
  const model = new OnnxModel(ort, session, config);
  return { model, tokenizer, eosId, page, loadSeconds: (performance.now() - started) / 1000 };
}

function settings(doc) {
  const value = (id) => doc.getElementById(id).value;
  const number = (id) => Number(value(id));
  const sampling = value("mode") === "sampling";
  const topK = number("top-k");
  const topP = number("top-p");
  const minP = number("min-p");
  return samplingConfig({
    maxNewTokens: number("max-new-tokens"),
    doSample: sampling,
    temperature: number("temperature"),
    topK: topK > 0 ? topK : null,
    topP: topP < 1 ? topP : null,
    minP: minP > 0 ? minP : null,
    repetitionPenalty: number("repetition-penalty"),
    stopStrings: value("stop-strings").split("\n").map((s) => s.replaceAll("\\n", "\n").replaceAll("\\t", "\t")).filter((s) => s),
    seed: value("seed") === "" ? null : number("seed"),
  });
}

/** Wire the page's controls; returns `{ready, generate}` (the tests drive it through them too). */
export function mountPage(doc, base) {
  const status = doc.getElementById("status");
  const output = doc.getElementById("output");
  const generateButton = doc.getElementById("generate");
  const stopButton = doc.getElementById("stop");
  let stopRequested = false;
  const show = (text, error = false) => {
    status.textContent = text;
    status.classList.toggle("error", error);
  };
  const ready = loadModel(base);
  ready.then(
    (loaded) => {
      show(`Model loaded in ${loaded.loadSeconds.toFixed(1)} s (${loaded.page.precision}, ${ort.env.wasm.numThreads} thread(s)). Ready.`);
      generateButton.disabled = false;
    },
    (error) => show(`Could not load the model: ${error.message}`, true),
  );

  async function generate(prompt, sampling) {
    const { model, tokenizer, eosId } = await ready;
    stopRequested = false;
    let text = "";
    let tokens = 0;
    const started = performance.now();
    for await (const piece of streamText(model, tokenizer, eosId, prompt, sampling, () => (tokens += 1))) {
      text += piece;
      output.textContent = prompt + text;
      if (stopRequested) break;
    }
    return { text, tokens, seconds: (performance.now() - started) / 1000 };
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
  return { ready, generate, ort };
}
