// gguf_check.mjs: checks a GGUF file we exported with an independent reader (npm's
// @huggingface/gguf) against the merged safetensors model and the base + adapter it came
// from. Used by tests/test_gguf_js.sh.
//   node gguf_check.mjs make-adapter BASE_DIR OUT_DIR     a PEFT adapter with random A and B
//   node gguf_check.mjs check BASE ADAPTER MERGED GGUF     metadata, names, shapes, values
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(process.env.GGUF_JS_DIR + "/");
const { gguf } = require("@huggingface/gguf");

let failures = 0;
function check(cond, what) {
  if (!cond) { failures++; console.error("FAIL: " + what); }
}

// ---- safetensors, read by hand ----
function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const base = 8 + n, tensors = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    tensors[name] = { ...t, buf, start: base + t.data_offsets[0] };
  }
  return tensors;
}
function readModel(dir) {
  const idx = path.join(dir, "model.safetensors.index.json");
  if (!fs.existsSync(idx)) return readSafetensors(path.join(dir, "model.safetensors"));
  const files = new Set(Object.values(JSON.parse(fs.readFileSync(idx, "utf8")).weight_map));
  return Object.assign({}, ...[...files].map((f) => readSafetensors(path.join(dir, f))));
}
function value(t, i) {
  switch (t.dtype) {
    case "F32": return t.buf.readFloatLE(t.start + 4 * i);
    case "BF16": { const b = Buffer.alloc(4); b.writeUInt16LE(t.buf.readUInt16LE(t.start + 2 * i), 2); return b.readFloatLE(0); }
    default: throw new Error("dtype " + t.dtype);
  }
}
function f16(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

// a deterministic generator for the adapter values (xorshift)
let seed = 12345;
function rand() { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed / 4294967296 - 0.5; }

function writeSafetensors(file, tensors) {
  const header = { __metadata__: { format: "pt" } };
  let off = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [off, off + 4 * t.data.length] };
    off += 4 * t.data.length;
  }
  let h = JSON.stringify(header);
  while (h.length % 8) h += " ";
  const out = Buffer.alloc(8 + h.length + off);
  out.writeBigUInt64LE(BigInt(h.length), 0);
  out.write(h, 8, "utf8");
  let p = 8 + h.length;
  for (const t of Object.values(tensors)) for (const v of t.data) { out.writeFloatLE(v, p); p += 4; }
  fs.writeFileSync(file, out);
}

function makeAdapter(baseDir, outDir) {
  const cfg = JSON.parse(fs.readFileSync(path.join(baseDir, "config.json"), "utf8"));
  const H = cfg.hidden_size, d = cfg.head_dim ?? H / cfg.num_attention_heads, r = 4;
  const q = cfg.num_attention_heads * d, kv = cfg.num_key_value_heads * d;
  // phi3: its fused projections, both (q|k|v and gate|up merged as one module each)
  const phi3 = cfg.model_type === "phi3";
  const shapes = phi3 ? { "self_attn.qkv_proj": [q + 2 * kv, H], "mlp.gate_up_proj": [2 * cfg.intermediate_size, H] }
    : { "self_attn.q_proj": [q, H], "self_attn.k_proj": [kv, H], "self_attn.v_proj": [kv, H] };
  const tensors = {};
  for (let l = 0; l < cfg.num_hidden_layers; l++)
    for (const [m, [out, inp]] of Object.entries(shapes)) {
      const p = `base_model.model.model.layers.${l}.${m}`;
      tensors[p + ".lora_A.weight"] = { shape: [r, inp], data: Array.from({ length: r * inp }, () => 0.2 * rand()) };
      tensors[p + ".lora_B.weight"] = { shape: [out, r], data: Array.from({ length: out * r }, () => 0.2 * rand()) };
    }
  fs.mkdirSync(outDir, { recursive: true });
  writeSafetensors(path.join(outDir, "adapter_model.safetensors"), tensors);
  fs.writeFileSync(path.join(outDir, "adapter_config.json"), JSON.stringify({
    peft_type: "LORA", task_type: "CAUSAL_LM", r, lora_alpha: 8, lora_dropout: 0.0,
    target_modules: Object.keys(shapes).map((m) => m.split(".")[1]), use_rslora: false, bias: "none" }, null, 2));
}

const GG = { "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight" };
const BLK = { input_layernorm: "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output", post_attention_layernorm: "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down" };
function ggufName(hf) {
  if (GG[hf]) return GG[hf];
  const m = hf.match(/^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/);
  return `blk.${m[1]}.${BLK[m[2]]}.${m[3]}`;
}

async function checkFile(baseDir, adapterDir, mergedDir, ggufPath) {
  const cfg = JSON.parse(fs.readFileSync(path.join(mergedDir, "config.json"), "utf8"));
  const qwen = cfg.model_type === "qwen2", arch = qwen ? "qwen2" : "llama";
  const { metadata, tensorInfos, tensorDataOffset } = await gguf(ggufPath, { allowLocalFile: true });
  const d = cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads;
  // metadata
  check(metadata["general.architecture"] === arch, "architecture " + metadata["general.architecture"]);
  check(metadata.version === 3, "version " + metadata.version);
  const want = { block_count: cfg.num_hidden_layers, embedding_length: cfg.hidden_size, feed_forward_length: cfg.intermediate_size,
    "attention.head_count": cfg.num_attention_heads, "attention.head_count_kv": cfg.num_key_value_heads,
    context_length: cfg.max_position_embeddings, "rope.dimension_count": d, vocab_size: cfg.vocab_size };
  for (const [k, v] of Object.entries(want)) check(metadata[`${arch}.${k}`] === v, `${arch}.${k}: ${metadata[`${arch}.${k}`]} != ${v}`);
  check(Math.abs(metadata[`${arch}.rope.freq_base`] - cfg.rope_theta) < 1e-3 * cfg.rope_theta, "rope.freq_base");
  check(Math.abs(metadata[`${arch}.attention.layer_norm_rms_epsilon`] - cfg.rms_norm_eps) < 1e-3 * cfg.rms_norm_eps, "rms eps");
  const tok = JSON.parse(fs.readFileSync(path.join(mergedDir, "tokenizer.json"), "utf8"));
  const tokens = metadata["tokenizer.ggml.tokens"];
  check(metadata["tokenizer.ggml.model"] === "gpt2", "tokenizer model " + metadata["tokenizer.ggml.model"]);
  check(tokens.length === cfg.vocab_size, "token count " + tokens.length);
  for (const [s, id] of Object.entries(tok.model.vocab)) if (tokens[id] !== s) { check(false, `token ${id}: ${tokens[id]} != ${s}`); break; }
  check(metadata["tokenizer.ggml.bos_token_id"] === cfg.bos_token_id, "bos id");
  check(metadata["tokenizer.ggml.eos_token_id"] === cfg.eos_token_id, "eos id");
  check(metadata["tokenizer.ggml.token_type"][cfg.bos_token_id] === 3, "bos is a control token");
  check(metadata["tokenizer.ggml.add_bos_token"] === true, "add_bos_token");
  // names and shapes
  const merged = readModel(mergedDir), base = readModel(baseDir), ad = readSafetensors(path.join(adapterDir, "adapter_model.safetensors"));
  const infos = Object.fromEntries(tensorInfos.map((t) => [t.name, t]));
  check(tensorInfos.length === Object.keys(merged).length, `tensor count ${tensorInfos.length} vs ${Object.keys(merged).length}`);
  const buf = fs.readFileSync(ggufPath);
  // the merged value before rounding: base + (alpha / r) * B[row] . A[:, col] (alpha 8, make-adapter's)
  const exact = (hf, hfRow, col, cols) => {
    const mod = hf.replace(/\.weight$/, ""), A = ad[`base_model.model.${mod}.lora_A.weight`], B = ad[`base_model.model.${mod}.lora_B.weight`];
    let x = value(base[hf], hfRow * cols + col);
    if (A) {
      let delta = 0;
      for (let k = 0; k < A.shape[0]; k++) delta += value(B, hfRow * A.shape[0] + k) * value(A, k * cols + col);
      x += (8 / A.shape[0]) * delta;
    }
    return x;
  };
  let sampled = 0, worst = 0;
  for (const [hf, t] of Object.entries(merged)) {
    const gi = infos[ggufName(hf)];
    if (!gi) { check(false, "missing " + ggufName(hf)); continue; }
    const shape = gi.shape.map(Number);
    check(JSON.stringify(shape) === JSON.stringify([...t.shape].reverse()), `${gi.name} shape ${shape} vs ${t.shape}`);
    // sampled values: GGUF element (row, col) against the merged model's row, undoing the q/k permutation
    const cols = t.shape.length > 1 ? t.shape[1] : t.shape[0], rows = t.shape.length > 1 ? t.shape[0] : 1;
    const heads = qwen ? 0 : hf.includes("q_proj") ? cfg.num_attention_heads : hf.includes("k_proj") ? cfg.num_key_value_heads : 0;
    const start = Number(tensorDataOffset) + Number(gi.offset);
    for (let s = 0; s < 24; s++) {
      const row = Math.floor((rand() + 0.5) * rows) % rows, col = Math.floor((rand() + 0.5) * cols) % cols;
      let hfRow = row;
      if (heads) { const h = Math.floor(row / d), w = row % d, i = w >> 1, j = w & 1; hfRow = h * d + j * (d / 2) + i; }
      const mv = value(t, hfRow * cols + col);
      let gv, tol;
      const e = row * cols + col;
      switch (gi.dtype) {
        case 0: gv = buf.readFloatLE(start + 4 * e); tol = 1e-7; break;
        case 1: gv = f16(buf.readUInt16LE(start + 2 * e)); tol = 0.008 * Math.abs(mv) + 1e-6; break;
        case 30: { const b = Buffer.alloc(4); b.writeUInt16LE(buf.readUInt16LE(start + 2 * e), 2); gv = b.readFloatLE(0); tol = 0.008 * Math.abs(mv) + 1e-7; break; }
        case 8: {
          // the block (32 columns of this row) against the reference q8_0 rule, from the exact merged
          // values (base + scale * B.A before the bf16 rounding of the merged file): the scale is
          // max |x| / 127 rounded to f16 (half an f16 step), and every code is x / scale rounded to
          // the nearest integer (off by at most half a step: truncation is off by up to a whole one)
          const blk = start + 34 * Math.floor(e / 32), d16 = f16(buf.readUInt16LE(blk)), q = buf.readInt8(blk + 2 + (e % 32));
          const c0 = col - (col % 32), xs = [];
          for (let c = c0; c < c0 + 32; c++) xs.push(exact(hf, hfRow, c, cols));
          const amax = Math.max(...xs.map(Math.abs)), dd = amax / 127, x = xs[col - c0];
          check(Math.abs(d16 - dd) <= 1.01 * Math.max(dd * 2 ** -11, 2 ** -25), `${gi.name} block of [${row},${col}]: scale ${d16}, max|x|/127 = ${dd}`);
          const ratio = dd ? x / dd : 0; // an all-zero block (unused token rows) is all zero codes
          check(Math.abs(q - ratio) <= 0.5 + 1e-3, `${gi.name}[${row},${col}]: code ${q}, x / scale = ${ratio} (not rounded to nearest)`);
          gv = d16 * q; tol = 0.5 * dd * 1.002 + 127 * Math.abs(d16 - dd) + 2 ** -8 * Math.abs(x);
          break;
        }
        default: check(false, `${gi.name}: unexpected type ${gi.dtype}`); continue;
      }
      if (t.shape.length === 1) check(gi.dtype === 0, `${gi.name}: 1-D tensors are F32`);
      worst = Math.max(worst, Math.abs(gv - mv));
      check(Math.abs(gv - mv) <= tol, `${gi.name}[${row},${col}] = ${gv}, merged ${hf}[${hfRow},${col}] = ${mv}`);
      // and the merged value is base + (alpha/r) * B[row] . A[:, col]
      const mod = hf.replace(/\.weight$/, ""), A = ad[`base_model.model.${mod}.lora_A.weight`], B = ad[`base_model.model.${mod}.lora_B.weight`];
      if (A && t.shape.length > 1) {
        let delta = 0;
        for (let k = 0; k < A.shape[0]; k++) delta += value(B, hfRow * A.shape[0] + k) * value(A, k * cols + col);
        const expect = value(base[hf], hfRow * cols + col) + (8 / A.shape[0]) * delta;
        check(Math.abs(expect - mv) <= 0.008 * Math.abs(expect) + 1e-6, `merged ${hf}[${hfRow},${col}] = ${mv}, expected ${expect}`);
      }
      sampled++;
    }
  }
  console.log(`${path.basename(ggufPath)}: ${tensorInfos.length} tensors, ${Object.keys(metadata).length} keys, ${sampled} sampled values (max |diff| ${worst.toExponential(2)})`);
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === "make-adapter") makeAdapter(args[0], args[1]);
else if (cmd === "check") await checkFile(args[0], args[1], args[2], args[3]);
else { console.error("usage: gguf_check.mjs make-adapter BASE OUT | check BASE ADAPTER MERGED GGUF"); process.exit(2); }
if (failures) { console.error(`${failures} checks failed`); process.exit(1); }
