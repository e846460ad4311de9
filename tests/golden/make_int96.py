#!/usr/bin/env python3
"""make_int96.py OUT_DIR: write OUT_DIR/int96.parquet and int96.jsonl, a Parquet file with INT96
timestamps (the legacy type Spark and Impala write) and the records it holds.

pyarrow writes INT96 only through an option of the GPU machine's pyarrow, so this file is built
here byte by byte from the Parquet format (docs/parquet.md): the Thrift compact protocol for the
footer and the page headers, PLAIN and RLE_DICTIONARY values, RLE/bit-packed definition levels,
data pages v1 and v2, uncompressed. The expected records are computed from the timestamps with
Python's datetime, independently of both readers; test_parquet_js.sh compares qlora-run's
records with them and with hyparquet's.

An INT96 value: 8 bytes little-endian nanoseconds within the day, then 4 bytes little-endian
Julian day number (2440588 is 1970-01-01). Its JSON form is hyparquet's (a JavaScript Date's
toJSON): the instant truncated toward zero to milliseconds, as YYYY-MM-DDTHH:MM:SS.mmmZ, a year
outside 0..9999 as +/-YYYYYY, null beyond 8.64e15 ms from 1970.
"""
import datetime
import json
import os
import struct
import sys

# ---- Thrift compact protocol ----
I32, I64, BINARY, LIST, STRUCT, TRUE, FALSE = 5, 6, 8, 9, 12, 1, 2


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n):
    return varint((n << 1) ^ (n >> 63))


class Struct:
    """a struct's fields in increasing id order: (id, type, value)"""

    def __init__(self, *fields):
        self.fields = [f for f in fields if f[2] is not None]

    def encode(self):
        out, last = bytearray(), 0
        for fid, t, v in self.fields:
            wire = (TRUE if v else FALSE) if t == "bool" else t
            delta = fid - last
            out += bytes([(delta << 4) | wire]) if 0 < delta <= 15 else bytes([wire]) + zigzag(fid)
            last = fid
            if t != "bool":
                out += value(t, v)
        out.append(0)
        return bytes(out)


def value(t, v):
    if t in (I32, I64):
        return zigzag(v)
    if t == BINARY:
        b = v.encode() if isinstance(v, str) else v
        return varint(len(b)) + b
    if t == STRUCT:
        return v.encode()
    if t == LIST:
        et, items = v
        head = bytes([(len(items) << 4) | et]) if len(items) < 15 else bytes([0xF0 | et]) + varint(len(items))
        return head + b"".join(value(et, x) for x in items)
    raise ValueError(t)


# ---- Parquet ----
PLAIN, RLE, RLE_DICTIONARY = 0, 3, 8
T_INT32, T_INT96, T_BYTE_ARRAY = 1, 3, 6
REQUIRED, OPTIONAL = 0, 1
UTF8 = 0
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3


def bitpacked(values, width):
    """the RLE/bit-packed hybrid as one bit-packed run (groups of 8, LSB first)"""
    vals = list(values) + [0] * (-len(values) % 8)
    bits, n = 0, 0
    for i, v in enumerate(vals):
        bits |= v << (i * width)
        n += width
    return varint(((len(vals) // 8) << 1) | 1) + bits.to_bytes(n // 8, "little")


def int96(ts):
    """(julian day, nanoseconds of the day) -> 12 bytes"""
    jday, nod = ts
    return struct.pack("<qi", nod, jday)


def plain(ptype, vals):
    if ptype == T_INT32:
        return b"".join(struct.pack("<i", v) for v in vals)
    if ptype == T_INT96:
        return b"".join(int96(v) for v in vals)
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in vals)


def page(kind, body, header):
    ph = Struct((1, I32, kind), (2, I32, len(body)), (3, I32, len(body)), *header).encode()
    return ph + body


def column_chunk(name, ptype, optional, vals, dictionary, v2):
    """(pages bytes, ColumnMetaData builder taking the chunk's offset)"""
    present = [v for v in vals if v is not None]
    defs = [0 if v is None else 1 for v in vals]
    out = bytearray()
    dict_off = None
    if dictionary:
        uniq = []
        for v in present:
            if v not in uniq:
                uniq.append(v)
        dict_off = 0
        out += page(DICTIONARY_PAGE, plain(ptype, uniq),
                    [(7, STRUCT, Struct((1, I32, len(uniq)), (2, I32, PLAIN)))])
        width = max(1, (len(uniq) - 1).bit_length())
        values = bytes([width]) + bitpacked([uniq.index(v) for v in present], width)
        enc = RLE_DICTIONARY
    else:
        values = plain(ptype, present)
        enc = PLAIN
    data_off = len(out)
    levels = bitpacked(defs, 1) if optional else b""
    if v2:
        out += page(DATA_PAGE_V2, levels + values,
                    [(8, STRUCT, Struct((1, I32, len(vals)), (2, I32, len(vals) - len(present)), (3, I32, len(vals)),
                                        (4, I32, enc), (5, I32, len(levels)), (6, I32, 0), (7, "bool", False)))])
    else:
        body = (struct.pack("<I", len(levels)) + levels if optional else b"") + values
        out += page(DATA_PAGE, body, [(5, STRUCT, Struct((1, I32, len(vals)), (2, I32, enc), (3, I32, RLE), (4, I32, RLE)))])
    encs = [PLAIN, RLE] + ([RLE_DICTIONARY] if dictionary else [])

    def meta(offset):
        return Struct((1, I32, ptype), (2, LIST, (I32, encs)), (3, LIST, (BINARY, [name])), (4, I32, 0),
                      (5, I64, len(vals)), (6, I64, len(out)), (7, I64, len(out)), (9, I64, offset + data_off),
                      (11, I64, offset + dict_off if dict_off is not None else None))
    return bytes(out), meta


# ---- the rows ----
EPOCH_JDAY = 2440588
NS_DAY = 86400 * 10**9


def ts(y, mo, d, h=0, mi=0, s=0, ns=0):
    days = (datetime.date(y, mo, d) - datetime.date(1970, 1, 1)).days
    return (EPOCH_JDAY + days, ((h * 60 + mi) * 60 + s) * 10**9 + ns)


def expected(v):
    """the JSON value of an INT96 (jday, nod), computed with datetime and 400-year cycles"""
    if v is None:
        return None
    jday, nod = v
    total = (jday - EPOCH_JDAY) * NS_DAY + nod
    ms = abs(total) // 10**6 * (1 if total >= 0 else -1)  # toward zero
    if abs(ms) > 8.64e15:
        return None
    days, rem = divmod(ms, 86400000)
    cycles = 0  # 146097 days are 400 Gregorian years: shift into datetime's years 1..9999
    while days < -700000:
        days += 146097
        cycles -= 1
    while days > 2900000:
        days -= 146097
        cycles += 1
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(days=days, milliseconds=rem)
    year = t.year + 400 * cycles
    ys = f"{year:04d}" if 0 <= year <= 9999 else f"{'-' if year < 0 else '+'}{abs(year):06d}"
    return f"{ys}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond // 1000:03d}Z"


ROWS = [
    # (id, ts, ts_dict, text)
    (0, ts(1970, 1, 1), ts(2021, 3, 4, 5, 6, 7, 123456789), "the epoch"),
    (1, ts(2021, 3, 4, 5, 6, 7, 123456789), ts(2021, 3, 4, 5, 6, 7, 123456789), "nanoseconds truncated"),
    (2, None, None, "null"),
    (3, (EPOCH_JDAY - 1, NS_DAY - 500000), ts(1900, 1, 1), "0.5 ms before 1970: toward zero"),
    (4, ts(1969, 12, 31, 23, 59, 58, 999999999), ts(1900, 1, 1), "before 1970"),
    (5, ts(2262, 4, 12), ts(2021, 3, 4, 5, 6, 7, 123456789), "past int64 nanoseconds"),
    (6, (EPOCH_JDAY + 3652425, 1), ts(1, 1, 1, 12), "year 11970"),
    (7, (0, 0), None, "Julian day 0: year -4713"),
    (8, (EPOCH_JDAY + 100000001, 0), ts(9999, 12, 31, 23, 59, 59, 999999999), "beyond a Date: null"),
]


def main():
    out_dir = sys.argv[1]
    cols = [("id", T_INT32, False, None, False, False), ("ts", T_INT96, True, None, False, False),
            ("ts_dict", T_INT96, True, None, True, True), ("text", T_BYTE_ARRAY, False, UTF8, False, False)]
    body = bytearray(b"PAR1")
    chunks = []
    for i, (name, ptype, optional, _, dictionary, v2) in enumerate(cols):
        pages, meta = column_chunk(name, ptype, optional, [r[i] for r in ROWS], dictionary, v2)
        off = len(body)
        body += pages
        chunks.append(Struct((2, I64, off), (3, STRUCT, meta(off))))
    schema = [Struct((4, BINARY, "schema"), (5, I32, len(cols)))]
    for name, ptype, optional, conv, _, _ in cols:
        schema.append(Struct((1, I32, ptype), (3, I32, OPTIONAL if optional else REQUIRED), (4, BINARY, name),
                             (6, I32, conv)))
    rg = Struct((1, LIST, (STRUCT, chunks)), (2, I64, len(body) - 4), (3, I64, len(ROWS)))
    footer = Struct((1, I32, 1), (2, LIST, (STRUCT, schema)), (3, I64, len(ROWS)), (4, LIST, (STRUCT, [rg])),
                    (6, BINARY, "qlora-run tests/golden/make_int96.py")).encode()
    body += footer + struct.pack("<I", len(footer)) + b"PAR1"
    with open(os.path.join(out_dir, "int96.parquet"), "wb") as f:
        f.write(body)
    with open(os.path.join(out_dir, "int96.jsonl"), "w", encoding="utf-8") as f:
        for r in ROWS:
            rec = {"id": r[0], "ts": expected(r[1]), "ts_dict": expected(r[2]), "text": r[3]}
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    print(f"int96: {len(body)} bytes, {len(ROWS)} rows")


main()
