"""gguf_kv.py FILE KEY: print one metadata value of a GGUF file (the header layout of
docs/gguf.md: magic, version, tensor count, key/value count, then typed key/value pairs)."""
import struct
import sys

SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_value(f, t):
    if t == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        return f.read(n).decode("utf-8")
    if t == 9:
        et, n = struct.unpack("<IQ", f.read(12))
        return [read_value(f, et) for _ in range(n)]
    return struct.unpack(FMT[t], f.read(SIZES[t]))[0]


def main():
    path, want = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            sys.exit(f"{path}: not a GGUF file")
        _version, _tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", f.read(8))
            key = f.read(n).decode("utf-8")
            (t,) = struct.unpack("<I", f.read(4))
            v = read_value(f, t)
            if key == want:
                print(v)
                return
    sys.exit(f"{path}: no key {want}")


main()
