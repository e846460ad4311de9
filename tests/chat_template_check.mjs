// chat_template_check.mjs: our Jinja renderer against npm's @huggingface/jinja (the Jinja
// implementation transformers.js renders chat templates with) on real models' templates.
//
//   node chat_template_check.mjs QLORA_BIN CORPUS.jsonl NAME=MODEL_DIR ...
//
// For every model directory (its tokenizer_config.json holds the template and the special
// tokens) and every corpus record, both render what apply_chat_template(tokenize=False) would:
// messages, tools and documents (null when absent), add_generation_prompt, the special tokens as
// strings, then the record's chat_template_kwargs. The outputs must be byte-identical, and a
// record the template rejects (raise_exception) must be rejected by both. JINJA_JS_DIR names
// the directory @huggingface/jinja is installed under (tests/npm_pkg.sh).
//
// GOLDEN_DIR (optional) holds NAME.jsonl from tests/chat_template/render_goldens.py: what
// transformers' apply_chat_template (jinja2) rendered on the GPU machine. Ours must equal it on
// every record. Where @huggingface/jinja itself differs from jinja2 (its str.lstrip(chars)
// strips white space too, for one) jinja2 is the truth: those records are counted and shown,
// and ours must still equal jinja2's.
import fs from "node:fs";
import { createRequire } from "node:module";
import { spawnSync } from "node:child_process";

const require = createRequire(process.env.JINJA_JS_DIR + "/");
const { Template } = require("@huggingface/jinja");
const [bin, corpusPath, ...models] = process.argv.slice(2);
const corpus = fs.readFileSync(corpusPath, "utf8").split("\n").filter((l) => l.trim());
const tokenText = (v) => (typeof v === "string" ? v : v && typeof v === "object" ? v.content : undefined);

let failures = 0, compared = 0, rejected = 0, jsWrong = 0, goldenCompared = 0;
const goldenDir = process.env.GOLDEN_DIR;
for (const spec of models) {
  const [name, dir] = spec.split("=");
  const cfg = JSON.parse(fs.readFileSync(dir + "/tokenizer_config.json", "utf8"));
  const tpl = new Template(cfg.chat_template);
  const specials = {};
  for (const k of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
    const t = tokenText(cfg[k]);
    if (t !== undefined && t !== null) specials[k] = t;
  }
  const want = corpus.map((line) => {
    const rec = JSON.parse(line);
    const ctx = {
      messages: rec.messages, tools: rec.tools ?? null, documents: rec.documents ?? null,
      add_generation_prompt: !!rec.add_generation_prompt, ...specials, ...(rec.chat_template_kwargs || {}),
    };
    try { return tpl.render(ctx); } catch (e) { return null; }
  });
  const run = spawnSync(bin, ["chat-template", "--model", dir, "--keep-going"], {
    input: corpus.join("\n") + "\n", encoding: "utf8", maxBuffer: 1 << 28,
  });
  const got = run.stdout.split("\n").filter((l) => l.length).map((l) => JSON.parse(l));
  if (got.length !== corpus.length) {
    console.error(`FAIL ${name}: ${got.length} outputs for ${corpus.length} records; stderr:\n${run.stderr.slice(0, 2000)}`);
    failures++;
    continue;
  }
  let golden = null;
  if (goldenDir && fs.existsSync(`${goldenDir}/${name}.jsonl`)) {
    golden = fs.readFileSync(`${goldenDir}/${name}.jsonl`, "utf8").split("\n").filter((l) => l.length).map((l) => JSON.parse(l));
    if (golden.length !== corpus.length) {
      console.error(`FAIL ${name}: the golden file has ${golden.length} lines for ${corpus.length} records`);
      failures++;
      continue;
    }
  }
  let bad = 0;
  for (let i = 0; i < corpus.length; i++) {
    compared++;
    if (want[i] === null) rejected++;
    if (golden) {
      goldenCompared++;
      if (got[i] !== golden[i]) {
        bad++;
        if (bad <= 3) console.error(`FAIL ${name} record ${i}: differs from transformers' rendering (golden)\n  ours:   ${JSON.stringify(got[i])}\n  golden: ${JSON.stringify(golden[i])}`);
        continue;
      }
      if (want[i] !== golden[i]) {
        jsWrong++;
        if (jsWrong <= 2) console.log(`note: ${name} record ${i}: @huggingface/jinja differs from jinja2 here; ours equals jinja2`);
        continue;
      }
    }
    if (got[i] === want[i]) continue;
    bad++;
    if (bad <= 3) {
      const a = got[i] ?? "(rejected)", b = want[i] ?? "(rejected)";
      let k = 0;
      while (k < a.length && k < b.length && a[k] === b[k]) k++;
      console.error(`FAIL ${name} record ${i}: differs at character ${k}\n  ours:   ${JSON.stringify(a.slice(Math.max(0, k - 40), k + 60))}\n  jinja:  ${JSON.stringify(b.slice(Math.max(0, k - 40), k + 60))}`);
    }
  }
  if (bad) {
    failures += bad;
    console.error(`FAIL ${name}: ${bad} of ${corpus.length} records differ`);
  } else {
    console.log(`${name}: ${corpus.length} records byte-identical to ${golden ? "transformers' goldens and " : ""}` +
                `@huggingface/jinja (${want.filter((w) => w === null).length} rejected by both)`);
  }
}
if (failures) process.exit(1);
console.log(`chat templates: ${compared} renderings, ${compared - jsWrong} identical to @huggingface/jinja (${rejected} rejections agree), ` +
  (goldenDir ? `${goldenCompared} identical to transformers' goldens; ${jsWrong} where only @huggingface/jinja differs` : "no goldens"));
