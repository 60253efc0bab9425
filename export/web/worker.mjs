// The model's Web Worker: onnxruntime-web and the decoding loop (simple_llm.mjs) run here, off the
// page's main thread, so the page stays responsive while the model loads and generates. page.mjs
// talks to it through `WorkerModel`: the key/value cache stays here, only token ids cross.
import { OnnxModel } from "./simple_llm.mjs";

let model = null;
const stopped = new Set(); // ids of the generations asked to stop
let queue = Promise.resolve(); // one job at a time on the session; stop messages are handled at once
let waiting = 0; // jobs sent and not started yet: a warm-up gives way to them

// A fresh page runs onnxruntime-web's WebAssembly from V8's baseline compiler and moves hot functions
// to its optimizing one as they run: S decodes about twice as fast after its first few hundred tokens
// (docs/performance.md, "In the browser"). So a loaded model decodes a dummy text while the visitor
// types, for at most WARM_UP_MS, from WARM_UP_DELAY_MS after the load (a job sent at once, as the web
// app's first generation, comes first), giving way to any job within 4 ms and one step.
const WARM_UP_MS = 2000;
const WARM_UP_DELAY_MS = 100;

let ort = null; // set up by the first load; later models (page.mjs reuses this worker) share it

// A one-node ONNX graph (y = Identity(x)): its session starts onnxruntime-web, which otherwise fetches
// and compiles its WebAssembly only once the model has arrived. Started while the model downloads,
// a first page loads M int8 in 3.8 s instead of 4.7 s at 100 Mbit/s (docs/performance.md).
const STARTER_GRAPH = "CAgSCnNpbXBsZS1sbG06OwoQCgF4EgF5IghJZGVudGl0eRIFc3RhcnRaDwoBeBIKCggIARIECgIIAWIPCgF5EgoKCAgBEgQKAggBQgQKABAN";

async function graphBytes(graph) {
  const response = await fetch(graph);
  if (!response.ok) throw new Error(`${graph}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function load({ runtime, graph, config, threads, wasmBinary }) {
  const bytes = graphBytes(graph); // downloads while onnxruntime-web starts
  bytes.catch(() => {}); // a failed download is reported below, once awaited
  if (ort === null) {
    ort = await import(runtime.ort);
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.wasmPaths = runtime.glue ? { mjs: runtime.glue, wasm: new URL("ort-wasm-simd-threaded.wasm", runtime.wasmPaths).href } : runtime.wasmPaths;
    if (wasmBinary) ort.env.wasm.wasmBinary = wasmBinary;
    const starter = Uint8Array.from(atob(STARTER_GRAPH), (c) => c.charCodeAt(0));
    await (await ort.InferenceSession.create(starter)).release();
  }
  const session = await ort.InferenceSession.create(await bytes, { executionProviders: ["wasm"] });
  model = new OnnxModel(ort, session, config);
  model.yieldEveryMs = 4; // messages (stop, jobs) are seen within 4 ms; a yield per token cost S 0.8x
  return { capacity: model.capacity, threads: ort.env.wasm.numThreads };
}

async function run(message) {
  const { id, type } = message;
  if (type === "load") return load(message);
  if (type === "step") {
    const { logits } = await model.step(message.ids, null, 0, 0);
    return logits;
  }
  if (type === "generate") {
    for await (const token of model.generateTokens(message.ids, message.sampling, message.stopTokens, () => stopped.has(id))) {
      postMessage({ id, type: "token", token });
    }
    stopped.delete(id);
    return null;
  }
  if (type === "release") {
    await model?.release();
    model = null;
    return null;
  }
  throw new Error(`unknown message ${type}`);
}

async function warmUp() {
  await new Promise((resolve) => setTimeout(resolve, WARM_UP_DELAY_MS));
  const until = performance.now() + WARM_UP_MS;
  const busy = () => waiting > 0 || model === null || performance.now() >= until;
  let tokens = 0;
  while (!busy()) {
    for await (const _ of model.generateTokens([0], { maxNewTokens: model.maxSeqLen }, [], busy)) tokens += 1;
  }
  postMessage({ type: "warmed-up", tokens });
}

self.onmessage = ({ data }) => {
  if (data.type === "stop") {
    stopped.add(data.target);
    return;
  }
  waiting += 1;
  queue = queue
    .then(() => {
      waiting -= 1;
      return run(data);
    })
    .then(
      (value) => {
        postMessage({ id: data.id, type: "result", value });
        if (data.type === "load") return warmUp();
      },
      (error) => postMessage({ id: data.id, type: "error", message: String(error?.message ?? error), code: error?.code }),
    )
    .catch(() => {}); // a failed warm-up leaves the model as it was
};
