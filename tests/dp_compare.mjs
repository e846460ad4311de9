// dp_compare.mjs: the checks of test_data_parallel.sh that need numbers.
//   node dp_compare.mjs losses A/train_log.jsonl B/train_log.jsonl TOL
//     every step's loss and grad_norm in A equals B's within TOL relative (same steps in both)
//   node dp_compare.mjs adapter A.safetensors B.safetensors TOL
//     the same tensors; in each, the largest difference within TOL of the tensor's largest value
//     (element by element, a value near zero that AdamW moved by 1e-9 would count as "different")
//   node dp_compare.mjs results A/results.json B/results.json TOL
//     an evaluate stage's table: losses within TOL relative, every generation and score the same
// Prints the largest relative difference; exits 1 with the first offending value.
import { readFileSync } from 'node:fs';

const [mode, a, b, tolText] = process.argv.slice(2);
const tol = Number(tolText);
let worst = 0;
function near(x, y, what) {
  const d = Math.abs(x - y), rel = d / Math.max(Math.abs(x), Math.abs(y), 1e-30);
  if (d > 1e-12) worst = Math.max(worst, rel);
  if (d > tol * Math.max(Math.abs(x), Math.abs(y)) + 1e-12) {
    console.error(`${what}: ${x} vs ${y} (relative difference ${rel.toExponential(2)} > ${tol})`);
    process.exit(1);
  }
}

function steps(path) {
  const out = new Map();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line) continue;
    const j = JSON.parse(line);
    if (j.type === 'step') out.set(j.step, j);
  }
  return out;
}

function tensors(path) {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const head = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = new Map();
  for (const [name, t] of Object.entries(head)) {
    if (name === '__metadata__') continue;
    if (t.dtype !== 'F32') throw new Error(`${path}: ${name} is ${t.dtype}, expected F32`);
    const [s, e] = t.data_offsets;
    const bytes = buf.subarray(8 + n + s, 8 + n + e);
    out.set(name, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)));
  }
  return out;
}

if (mode === 'losses') {
  const A = steps(a), B = steps(b);
  if (A.size === 0 || A.size !== B.size) {
    console.error(`step counts differ: ${A.size} vs ${B.size}`);
    process.exit(1);
  }
  for (const [k, x] of A) {
    const y = B.get(k);
    if (!y) { console.error(`step ${k} missing from ${b}`); process.exit(1); }
    near(x.loss, y.loss, `step ${k} loss`);
    near(x.grad_norm, y.grad_norm, `step ${k} grad_norm`);
  }
  console.log(`${A.size} steps, largest relative difference ${worst.toExponential(2)}`);
} else if (mode === 'adapter') {
  const A = tensors(a), B = tensors(b);
  if (A.size === 0 || A.size !== B.size) { console.error(`tensor counts differ: ${A.size} vs ${B.size}`); process.exit(1); }
  let n = 0;
  for (const [name, x] of A) {
    const y = B.get(name);
    if (!y || y.length !== x.length) { console.error(`${name}: missing or another shape in ${b}`); process.exit(1); }
    let scale = 0, diff = 0, at = 0;
    for (let i = 0; i < x.length; i++) {
      scale = Math.max(scale, Math.abs(x[i]), Math.abs(y[i]));
      if (Math.abs(x[i] - y[i]) > diff) { diff = Math.abs(x[i] - y[i]); at = i; }
    }
    const rel = scale > 0 ? diff / scale : 0;
    worst = Math.max(worst, rel);
    if (rel > tol) {
      console.error(`${name}[${at}]: ${x[at]} vs ${y[at]}: difference ${rel.toExponential(2)} of the tensor's largest value (> ${tol})`);
      process.exit(1);
    }
    n += x.length;
  }
  console.log(`${A.size} tensors, ${n} values, largest difference ${worst.toExponential(2)} of a tensor's scale`);
} else if (mode === 'results') {
  const A = JSON.parse(readFileSync(a, 'utf8')), B = JSON.parse(readFileSync(b, 'utf8'));
  for (const [set, row] of Object.entries(A.val || {})) {
    for (const side of ['base', 'tuned']) {
      if (!row[side]) continue;
      near(row[side].loss, B.val[set][side].loss, `val ${set} ${side} loss`);
    }
    if (row.tokens !== B.val[set].tokens) { console.error(`val ${set}: ${row.tokens} vs ${B.val[set].tokens} tokens`); process.exit(1); }
  }
  const ga = A.generations || [], gb = B.generations || [];
  if (ga.length === 0 || ga.length !== gb.length) { console.error(`generations: ${ga.length} vs ${gb.length}`); process.exit(1); }
  for (let i = 0; i < ga.length; i++)
    for (const k of ['base', 'tuned', 'score_base', 'score_tuned'])
      if (JSON.stringify(ga[i][k]) !== JSON.stringify(gb[i][k])) {
        console.error(`generation ${i} ${k}: ${JSON.stringify(ga[i][k])} vs ${JSON.stringify(gb[i][k])}`);
        process.exit(1);
      }
  if (JSON.stringify(A.score) !== JSON.stringify(B.score)) { console.error(`score: ${JSON.stringify(A.score)} vs ${JSON.stringify(B.score)}`); process.exit(1); }
  console.log(`${ga.length} generations the same, losses within ${worst.toExponential(2)}`);
} else {
  console.error('usage: node dp_compare.mjs losses|adapter|results A B TOL');
  process.exit(2);
}
