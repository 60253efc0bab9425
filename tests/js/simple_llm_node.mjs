// Runs export/web/simple_llm.mjs under Node (onnxruntime-node, @huggingface/tokenizers) for the
// tests, answering one request given as JSON:
//
//   {"folder": EXPORT_DIR, "graph": "model_fast.onnx", "ids": [...], "sampling": {...}}  -> {"tokens": [...]}
//   {"folder": EXPORT_DIR, "prompt": "text", "sampling": {...}}                          -> {"pieces": [...]}
//   {"filter": {"logits": [...], "seen": [...], "sampling": {...}}}                       -> {"kept": [...], "choice": id}
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { Tokenizer } from "@huggingface/tokenizers";
import { OnnxModel, applyRepetitionPenalty, chooseToken, filteredLogits, samplingConfig, streamText } from "../../export/web/simple_llm.mjs";

const request = JSON.parse(process.argv[2]);
const answer = {};
if (request.filter) {
  const { logits, seen, sampling } = request.filter;
  const s = samplingConfig(sampling);
  const penalized = applyRepetitionPenalty(logits, seen ?? [], s.repetitionPenalty);
  const kept = s.greedy ? null : filteredLogits(penalized, s);
  answer.kept = kept === null ? null : [...kept.keys()].filter((i) => kept[i] > -Infinity);
  answer.choice = chooseToken(logits, seen ?? [], s, () => 0.5);
} else {
  const folder = request.folder;
  const config = JSON.parse(fs.readFileSync(path.join(folder, "config.json"), "utf8"));
  const options = { executionProviders: ["cpu"], intraOpNumThreads: 1 };
  const session = await ort.InferenceSession.create(path.join(folder, request.graph ?? "model_fast.onnx"), options);
  const model = new OnnxModel(ort, session, config);
  answer.capacity = model.capacity;
  if (request.ids) {
    answer.tokens = [];
    for await (const token of model.generateTokens(request.ids, request.sampling ?? {}, request.stop ?? [])) answer.tokens.push(token);
  }
  if (request.prompt !== undefined) {
    const tokenizerJson = JSON.parse(fs.readFileSync(path.join(folder, "tokenizer.json"), "utf8"));
    const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(folder, "tokenizer_config.json"), "utf8"));
    const tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    const eos = tokenizerJson.added_tokens.find((t) => t.content === tokenizerConfig.eos_token).id;
    answer.pieces = [];
    for await (const piece of streamText(model, tokenizer, eos, request.prompt, request.sampling ?? {})) answer.pieces.push(piece);
  }
}
console.log(JSON.stringify(answer));
