// The model's Web Worker: onnxruntime-web and the decoding loop (simple_llm.mjs) run here, off the
// page's main thread, so the page stays responsive while the model loads and generates. page.mjs
// talks to it through `WorkerModel`: the key/value cache stays here, only token ids cross.
import { OnnxModel } from "./simple_llm.mjs";

let model = null;
const stopped = new Set(); // ids of the generations asked to stop
let queue = Promise.resolve(); // one job at a time on the session; stop messages are handled at once

let ort = null; // set up by the first load; later models (page.mjs reuses this worker) share it

async function load({ runtime, graph, config, threads, wasmBinary }) {
  if (ort === null) {
    ort = await import(runtime.ort);
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.wasmPaths = runtime.glue ? { mjs: runtime.glue, wasm: new URL("ort-wasm-simd-threaded.wasm", runtime.wasmPaths).href } : runtime.wasmPaths;
    if (wasmBinary) ort.env.wasm.wasmBinary = wasmBinary;
  }
  const session = await ort.InferenceSession.create(graph, { executionProviders: ["wasm"] });
  model = new OnnxModel(ort, session, config);
  model.yieldEveryMs = 0; // a stop message is seen before the next token
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

self.onmessage = ({ data }) => {
  if (data.type === "stop") {
    stopped.add(data.target);
    return;
  }
  queue = queue.then(() => run(data)).then(
    (value) => postMessage({ id: data.id, type: "result", value }),
    (error) => postMessage({ id: data.id, type: "error", message: String(error?.message ?? error), code: error?.code }),
  );
};
