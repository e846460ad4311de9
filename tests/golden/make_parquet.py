#!/usr/bin/env python3
"""make_parquet.py OUT_DIR [--bench]: write the Parquet fixtures of tests/golden/parquet/ with pyarrow.

Every fixture is written by pyarrow (the writer most hub datasets come from) with the options
its name says, and beside it OUT_DIR/<name>.jsonl holds the records as pyarrow's to_pylist()
gives them (bytes as UTF-8 text), one JSON object a line, so the C reader can be checked
against the writer itself as well as against hyparquet (tests/test_parquet_js.sh).

--bench also writes alpaca_52k.parquet (52,002 Alpaca-shaped rows, snappy, pyarrow's defaults)
for bench/parquet/run.sh; they are not committed.

Deterministic: every value comes from random.Random with a fixed seed. Runs in a few seconds.
"""
import json
import os
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("the of and a to in is you that it for on are with as be this can data model write describe "
         "explain list generate story poem sentence word example following given text create summary "
         "article three five reasons benefits important different between health water energy climate "
         "Café naïve über résumé 日本 数据 😀 \"quoted\" back\\slash tab\there").split(" ")


def words(r, lo, hi):
    n = r.randint(lo, hi)
    out = []
    for i in range(n):
        out.append(r.choice(WORDS))
        if i + 1 < n:
            out.append(" " if r.randrange(12) else (", " if r.randrange(2) else "\n"))
    return "".join(out)


def alpaca_rows(r, n):
    rows = []
    for _ in range(n):
        rows.append({
            "instruction": words(r, 5, 18) + ".",
            "input": words(r, 3, 40) if r.randrange(10) < 4 else "",
            "output": words(r, 5, 90) + ".",
        })
    return rows


def plain(v):
    """a to_pylist() value as JSON: bytes as text"""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, tuple):  # map entries
        return [plain(x) for x in v]
    return v


def write_one(out, name, table, jsonl=True, **kw):
    kw.setdefault("store_schema", False)
    path = os.path.join(out, name + ".parquet")
    pq.write_table(table, path, **kw)
    back = pq.read_table(path)
    assert back.equals(table) or back.to_pylist() == table.to_pylist(), name
    md = pq.ParquetFile(path).metadata
    if jsonl:
        with open(os.path.join(out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(plain(row), ensure_ascii=False, separators=(",", ":")) + "\n")
    encs = sorted({e for g in range(md.num_row_groups) for c in range(md.num_columns)
                   for e in md.row_group(g).column(c).encodings})
    print(f"{name}: {os.path.getsize(path)} bytes, {md.num_rows} rows, {md.num_row_groups} row groups, "
          f"encodings {','.join(encs)}, {kw.get('compression', 'snappy')}, pages v{kw.get('data_page_version', '1.0')}")


FAILED = []


def write(out, name, table, **kw):
    try:
        write_one(out, name, table, **kw)
    except Exception as e:  # report every fixture that cannot be written, then fail
        print(f"{name}: FAILED: {type(e).__name__}: {e}")
        FAILED.append(name)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    print(f"pyarrow {pa.__version__}")
    r = random.Random(17)

    # alpaca records under every codec; several row groups and pages; the same rows as JSONL
    rows = alpaca_rows(r, 60)
    t = pa.Table.from_pylist(rows, schema=pa.schema([("instruction", pa.string()), ("input", pa.string()),
                                                      ("output", pa.string())]))
    for codec in ("snappy", "zstd", "gzip", "brotli", "none"):
        write(out, "alpaca_" + codec, t, compression=codec, row_group_size=25, data_page_size=1024,
              write_batch_size=8)

    # the same rows, plain encoding, data pages v2, one row group
    write(out, "alpaca_plain_v2", t, use_dictionary=False, data_page_version="2.0", compression="zstd",
          data_page_size=2048, write_batch_size=8)

    # a dictionary that overflows into plain pages inside one column chunk (pyarrow's fallback)
    many = pa.table({"id": list(range(300)), "s": [words(r, 1, 6) + str(i) for i in range(300)],
                     "cat": [r.choice(["red", "green", "blue", None]) for _ in range(300)]})
    write(out, "dict_fallback", many, dictionary_pagesize_limit=512, data_page_size=512, write_batch_size=16,
          row_group_size=200)

    # scalar types with nulls, pages v1 and v2
    n = 40

    def maybe(v):
        return None if r.randrange(5) == 0 else v
    types = pa.table({
        "i8": pa.array([maybe(r.randint(-128, 127)) for _ in range(n)], pa.int8()),
        "i16": pa.array([maybe(r.randint(-32768, 32767)) for _ in range(n)], pa.int16()),
        "i32": pa.array([maybe(r.randint(-2**31, 2**31 - 1)) for _ in range(n)], pa.int32()),
        "i64": pa.array([maybe(r.randint(-2**53, 2**53)) for _ in range(n)], pa.int64()),
        "u8": pa.array([maybe(r.randint(0, 255)) for _ in range(n)], pa.uint8()),
        "u32": pa.array([maybe(r.randint(0, 2**32 - 1)) for _ in range(n)], pa.uint32()),
        "f32": pa.array([maybe(r.choice([0.5, -1.25, 3.0, 1e10, 0.0])) for _ in range(n)], pa.float32()),
        "f64": pa.array([maybe(r.choice([0.1, -2.5e-300, 12345.678, 1e300, 0.0, 3.0])) for _ in range(n)],
                        pa.float64()),
        "b": pa.array([maybe(r.randrange(2) == 1) for _ in range(n)], pa.bool_()),
        "s": pa.array([maybe(words(r, 0, 5)) for _ in range(n)], pa.string()),
        "ls": pa.array([maybe(words(r, 0, 5)) for _ in range(n)], pa.large_string()),
        "bin": pa.array([maybe(words(r, 0, 3).encode()) for _ in range(n)], pa.binary()),
        "req": pa.array([words(r, 1, 3) for _ in range(n)], pa.string()),
    }, schema=pa.schema([("i8", pa.int8()), ("i16", pa.int16()), ("i32", pa.int32()), ("i64", pa.int64()),
                         ("u8", pa.uint8()), ("u32", pa.uint32()), ("f32", pa.float32()), ("f64", pa.float64()),
                         ("b", pa.bool_()), ("s", pa.string()), ("ls", pa.large_string()), ("bin", pa.binary()),
                         pa.field("req", pa.string(), nullable=False)]))
    write(out, "types_v1", types, row_group_size=15, compression="snappy")
    write(out, "types_v2", types, row_group_size=15, compression="gzip", data_page_version="2.0",
          use_dictionary=False, data_page_size=128, write_batch_size=4)
    write(out, "types_dict_v2", types, compression="brotli", data_page_version="2.0")

    # chat records: list<struct<role, content>> (3-level LIST), with null and empty lists,
    # null messages and null fields; the compliant 'element' naming and the older 'item'
    roles = ["system", "user", "assistant"]
    chats = []
    for i in range(45):
        k = r.randint(0, 6)
        if i % 11 == 5:
            msgs = None
        elif i % 13 == 7:
            msgs = []
        else:
            msgs = []
            for j in range(k):
                if i % 9 == 4 and j == 1:
                    msgs.append(None)
                else:
                    msgs.append({"role": roles[0] if j == 0 and i % 3 == 0 else roles[1 + j % 2],
                                 "content": words(r, 0, 25) if i % 17 != 3 else None})
        chats.append({"id": i, "messages": msgs, "source": maybe("gen")})
    msg_t = pa.struct([("role", pa.string()), ("content", pa.string())])
    chat_schema = pa.schema([("id", pa.int64()), ("messages", pa.list_(msg_t)), ("source", pa.string())])
    ct = pa.Table.from_pylist(chats, schema=chat_schema)
    write(out, "chat_element", ct, row_group_size=20, data_page_size=512, write_batch_size=4)
    write(out, "chat_item", ct, row_group_size=20, use_compliant_nested_type=False, data_page_version="2.0",
          compression="zstd")
    # clean chat rows (every message complete), with a JSONL twin for the identical-artifact test
    clean = [{"messages": [{"role": "user", "content": words(r, 2, 20)},
                           {"role": "assistant", "content": words(r, 2, 40)}] * r.randint(1, 3)} for _ in range(30)]
    write(out, "chat_clean", pa.Table.from_pylist(clean, schema=pa.schema([("messages", pa.list_(msg_t))])),
          row_group_size=12)

    # deeper nesting: a struct, a list of ints, a list of lists of strings, a list of structs
    # holding a list
    nested = []
    for i in range(30):
        nested.append({
            "meta": maybe({"lang": r.choice(["en", "de", None]), "score": maybe(r.random() * 10 // 0.25 * 0.25)}),
            "ints": maybe([maybe(r.randint(-5, 5)) for _ in range(r.randint(0, 4))]),
            "ll": maybe([maybe([maybe(r.choice(WORDS)) for _ in range(r.randint(0, 3))]) for _ in range(r.randint(0, 3))]),
            "turns": maybe([{"who": r.choice(["a", "b"]), "tags": maybe([r.choice(WORDS) for _ in range(r.randint(0, 2))])}
                            for _ in range(r.randint(0, 3))]),
        })
    nested_schema = pa.schema([
        ("meta", pa.struct([("lang", pa.string()), ("score", pa.float64())])),
        ("ints", pa.list_(pa.int32())),
        ("ll", pa.list_(pa.list_(pa.string()))),
        ("turns", pa.list_(pa.struct([("who", pa.string()), ("tags", pa.list_(pa.string()))]))),
    ])
    nt = pa.Table.from_pylist(nested, schema=nested_schema)
    write(out, "nested", nt, row_group_size=11, data_page_size=256, write_batch_size=4)
    write(out, "nested_v2_item", nt, data_page_version="2.0", use_compliant_nested_type=False, use_dictionary=False)

    # delta and byte-stream-split encodings (pages v1 and v2), with nulls
    d = pa.table({
        "i32": pa.array([maybe(r.randint(-2**31, 2**31 - 1) if i % 7 == 0 else 1000 + 3 * i) for i in range(400)], pa.int32()),
        "i64": pa.array([maybe(r.randint(-2**62, 2**62) if i % 5 == 0 else -i * 1000003) for i in range(400)], pa.int64()),
        "len": pa.array([maybe(words(r, 0, 8)) for _ in range(400)], pa.string()),
        "pre": pa.array([maybe("prefix/shared/" + str(i // 3) + "/" + words(r, 0, 2)) for i in range(400)], pa.string()),
        "f": pa.array([maybe(r.choice([1.5, -0.25, 8.0])) for _ in range(400)], pa.float32()),
        "g": pa.array([maybe(r.choice([0.1, 2.0, -1e-5])) for _ in range(400)], pa.float64()),
    })
    enc = {"i32": "DELTA_BINARY_PACKED", "i64": "DELTA_BINARY_PACKED", "len": "DELTA_LENGTH_BYTE_ARRAY",
           "pre": "DELTA_BYTE_ARRAY", "f": "BYTE_STREAM_SPLIT", "g": "BYTE_STREAM_SPLIT"}
    write(out, "delta_v1", d, use_dictionary=False, column_encoding=enc, row_group_size=150, data_page_size=700,
          write_batch_size=32)
    write(out, "delta_v2", d, use_dictionary=False, column_encoding=enc, data_page_version="2.0",
          compression="zstd", data_page_size=1500, write_batch_size=64)

    # large strings: values of 100 KB to 600 KB (zstd keeps the file small)
    big = []
    for i in range(6):
        chunk = words(r, 200, 400)
        big.append({"instruction": "summarise document " + str(i),
                    "input": (chunk * (100000 * (i + 1) // len(chunk) + 1))[:100000 * (i + 1) + i * 12345],
                    "output": words(r, 3, 10)})
    write(out, "large_strings", pa.Table.from_pylist(big), compression="zstd", row_group_size=2)

    if "--bench" in sys.argv:
        rb = random.Random(52002)
        brows = alpaca_rows(rb, 52002)
        bt = pa.Table.from_pylist(brows)
        write(out, "alpaca_52k", bt, jsonl=False)
    if FAILED:
        sys.exit("failed: " + " ".join(FAILED))


if __name__ == "__main__":
    main()
