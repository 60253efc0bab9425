// Loads an export folder with transformers.js (under Node, offline) and answers one request.
//
//   node tests/js/transformers_js.mjs REQUEST_JSON
//   {"folder": ".../onnx", "dtype": "fp32", "generate": [ids...], "new_tokens": 24, "encode": ["text", ...]}
//
// prints {"generated": [ids of the greedy continuation], "encoded": [[ids], ...]} as JSON.
import path from "node:path";
import { AutoModelForCausalLM, AutoTokenizer, Tensor, env } from "@huggingface/transformers";

const request = JSON.parse(process.argv[2]);
const folder = path.resolve(request.folder);
env.allowRemoteModels = false; // never the Hub: the folder as it is
env.localModelPath = path.dirname(folder) + path.sep;
const name = path.basename(folder);

const answer = {};
if (request.generate) {
  const model = await AutoModelForCausalLM.from_pretrained(name, { dtype: request.dtype ?? "fp32", device: "cpu" });
  const ids = request.generate;
  const input_ids = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
  const attention_mask = new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
  const output = await model.generate({ input_ids, attention_mask, max_new_tokens: request.new_tokens, do_sample: false });
  answer.generated = Array.from(output.data, Number).slice(ids.length);
  await model.dispose();
}
if (request.encode) {
  const tokenizer = await AutoTokenizer.from_pretrained(name);
  answer.encoded = request.encode.map((text) => tokenizer.encode(text));
}
console.log(JSON.stringify(answer));
