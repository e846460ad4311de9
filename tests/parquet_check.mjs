// parquet_check.mjs FILE.parquet OURS.jsonl PYARROW.jsonl: every record qlora-run read from a
// Parquet file (OURS, from `qlora-run data read`) must equal what hyparquet reads from the same
// file, and what pyarrow wrote it from (PYARROW, from tests/golden/make_parquet.py): the same
// fields in the same order, the same strings, numbers (exactly), booleans, nulls, lists and
// objects. Integers of 16 digits or more are compared as text, so nothing is lost to doubles.
// Needs HYPARQUET_DIR and HYPARQUET_COMPRESSORS_DIR (tests/npm_pkg.sh installs them).
import fs from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const load = async (dir, name) => import(pathToFileURL(createRequire(dir + "/").resolve(name)).href);
const { parquetReadObjects } = await load(process.env.HYPARQUET_DIR, "hyparquet");
const { compressors } = await load(process.env.HYPARQUET_COMPRESSORS_DIR, "hyparquet-compressors");

const [file, oursPath, refPath] = process.argv.slice(2);
const bigText = (s) => s.replace(/^-/, "").length >= 16;

// hyparquet's values as JSON would carry them
function norm(v) {
  if (v === undefined || v === null) return null;
  if (v instanceof Date) return v.toJSON(); // INT96 timestamps: ISO text, null for an Invalid Date
  if (typeof v === "bigint") return bigText(v.toString()) ? v.toString() : Number(v);
  if (typeof v === "number" && Number.isInteger(v) && bigText(String(v))) return BigInt(v).toString();
  if (v instanceof Uint8Array) return new TextDecoder("utf-8", { fatal: true }).decode(v);
  if (Array.isArray(v)) return v.map(norm);
  if (typeof v === "object") {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = norm(x);
    return o;
  }
  return v;
}

// JSON lines, long integers kept as text
function readJsonl(path) {
  return fs.readFileSync(path, "utf8").split("\n").filter((l) => l.length).map((l) =>
    JSON.parse(l.replace(/([:\[,])(-?\d{16,})(?=[,\]\}])/g, '$1"$2"')));
}

function diff(a, b, at) {
  if (typeof a === "number" && typeof b === "number") return a === b || (a === 0 && b === 0) ? null : `${at}: ${a} != ${b}`;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object")
    return a === b ? null : `${at}: ${JSON.stringify(a)?.slice(0, 80)} != ${JSON.stringify(b)?.slice(0, 80)}`;
  if (Array.isArray(a) !== Array.isArray(b)) return `${at}: list against object`;
  const ka = Object.keys(a), kb = Object.keys(b);
  if (ka.join("\u0001") !== kb.join("\u0001")) return `${at}: fields [${ka}] != [${kb}]`;
  for (const k of ka) {
    const d = diff(a[k], b[k], `${at}.${k}`);
    if (d) return d;
  }
  return null;
}

const buf = fs.readFileSync(file);
const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
const theirs = (await parquetReadObjects({ file: ab, compressors })).map(norm);
const ours = readJsonl(oursPath), ref = readJsonl(refPath);
let bad = 0;
for (const [name, other] of [["hyparquet", theirs], ["pyarrow", ref]]) {
  if (other.length !== ours.length) {
    console.log(`${file}: ${ours.length} records, ${name} ${other.length}`);
    bad++;
    continue;
  }
  for (let i = 0; i < ours.length; i++) {
    const d = diff(ours[i], other[i], `record ${i}`);
    if (d) {
      console.log(`${file}: against ${name}: ${d}`);
      bad++;
      break;
    }
  }
}
if (bad) process.exit(1);
console.log(`ok ${file.split("/").pop()}: ${ours.length} records equal hyparquet's and pyarrow's`);
