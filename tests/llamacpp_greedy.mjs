// llamacpp_greedy.mjs: greedy continuation of token ids by real llama.cpp (node-llama-cpp's
// prebuilt CPU binary), for tests/test_llamacpp.sh.
//
//   node llamacpp_greedy.mjs NODE_MODULES MODEL.gguf N ID...
//
// Loads MODEL.gguf with llama.cpp (no GPU, never building from source), evaluates the prompt ids
// (no BOS added: the ids are the whole prompt) and prints the N greedily chosen next ids (an end
// token does not stop it, as `qlora-run generate --ids` does not stop) on one
// line, then one line of metadata as JSON (BOS/EOS ids and the vocabulary size llama.cpp read).
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const [nm, modelPath, nStr, ...idStrs] = process.argv.slice(2);
const require = createRequire(path.join(nm, 'x.js'));
const { getLlama } = await import(pathToFileURL(require.resolve('node-llama-cpp')).href);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: "warn" });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const ctx = 256;
const context = await model.createContext({ contextSize: ctx, batchSize: ctx, threads: 1 });
const sequence = context.getSequence();
const ids = idStrs.map(Number);
const n = Number(nStr);
const out = [];
for await (const token of sequence.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
  out.push(token);
  if (out.length >= n) break;
}
console.log(out.join(' '));
console.log(JSON.stringify({ bos: model.tokens.bos, eos: model.tokens.eos }));
await context.dispose();
await model.dispose();
await llama.dispose();
