// oracle.mjs: reference output from @huggingface/tokenizers (the JavaScript port of
// `tokenizers` that transformers.js uses), one tokenizer load for many files.
//
//   node oracle.mjs NODE_MODULES TOKENIZER_DIR batch OUTDIR PLAIN_FILE SPECIAL_FILE
//     texts are one a line; writes OUTDIR/plain.ids (ids of PLAIN_FILE without specials),
//     plain.dec (their decode), plain.nfc (PLAIN_FILE in Unicode NFC) and special.ids (ids
//     of SPECIAL_FILE with the post-processor's specials)
//   node oracle.mjs NODE_MODULES TOKENIZER_DIR time FILE
//     encodes every line (after a warm-up pass) and prints the MB/s of the encode calls
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [nm, dir, mode, ...rest] = process.argv.slice(2);
const { Tokenizer } = await import(pathToFileURL(path.join(nm, '@huggingface/tokenizers/dist/tokenizers.mjs')).href);
const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
const cfgPath = path.join(dir, 'tokenizer_config.json');
const cfg = fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, 'utf8')) : {};
const tok = new Tokenizer(tj, cfg);
const readLines = (f) => {
  const lines = fs.readFileSync(f, 'utf8').split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines;
};
const write = (f, rows) => fs.writeFileSync(f, rows.map((l) => l + '\n').join(''));

if (mode === 'batch') {
  const [outdir, plainFile, specialFile] = rest;
  const lines = readLines(plainFile);
  const plain = lines.map((l) => tok.encode(l, { add_special_tokens: false }).ids);
  write(path.join(outdir, 'plain.ids'), plain.map((ids) => ids.join(' ')));
  write(path.join(outdir, 'plain.dec'), plain.map((ids) => (ids.length ? tok.decode(ids, { clean_up_tokenization_spaces: false }) : '')));
  write(path.join(outdir, 'plain.nfc'), lines.map((l) => l.normalize('NFC')));
  write(path.join(outdir, 'special.ids'), readLines(specialFile).map((l) => tok.encode(l).ids.join(' ')));
} else if (mode === 'time') {
  const lines = readLines(rest[0]);
  let bytes = 0;
  for (const l of lines) { tok.encode(l); bytes += Buffer.byteLength(l); } // warm-up pass
  const t0 = process.hrtime.bigint();
  for (const l of lines) tok.encode(l);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`${(bytes / 1e6 / s).toFixed(2)} MB/s (${bytes} bytes, ${s.toFixed(3)} s)`);
} else {
  console.error('usage: oracle.mjs NODE_MODULES TOKENIZER_DIR batch OUTDIR PLAIN_FILE SPECIAL_FILE | time FILE');
  process.exit(2);
}
