#!/usr/bin/env python3
"""Checks for tests/test_report_browser.sh, standard library only.

  report_check.py png FILE        the screenshot is a real picture: decodes the PNG (zlib, the
                                  five filters) and requires enough non-background pixels and
                                  colours, so a blank or error page fails
  report_check.py dom FILE IDS..  the DOM Chromium built (--dump-dom) has each svg.plot id,
                                  each with a drawn polyline (or the timeline's bars)
"""
import re
import struct
import sys
import zlib


def png_pixels(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise SystemExit(f"{path}: unexpected PNG format {hdr}")
    bpp = 3 if ctype == 2 else 4
    raw, stride, prev, rows = zlib.decompress(idat), w * bpp, bytearray(w * bpp), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, bpp, rows


def check_png(path):
    w, h, bpp, rows = png_pixels(path)
    bg = rows[0][:3]
    colours, differ = set(), 0
    for r in rows[::2]:
        for x in range(0, w * bpp, bpp * 2):
            px = r[x:x + 3]
            colours.add(px)
            differ += px != bg
    share = differ / ((h + 1) // 2 * ((w + 1) // 2))
    print(f"screenshot {w}x{h}: {len(colours)} colours, {share:.1%} of pixels differ from the background")
    if len(colours) < 20 or share < 0.03:
        raise SystemExit("the screenshot is (nearly) blank")


def check_dom(path, ids):
    dom = open(path, encoding="utf-8", errors="replace").read()
    svgs = re.findall(r'<svg class="plot[^"]*" id="([^"]+)"(.*?)</svg>', dom, re.S)
    found = {i: body for i, body in svgs}
    print(f"{len(svgs)} svg.plot elements: {' '.join(sorted(found))}")
    for want in ids:
        body = found.get(want)
        if body is None:
            raise SystemExit(f"no <svg class=\"plot\" id=\"{want}\"> in the rendered page")
        if want == "plot-timeline":
            if "<rect" not in body:
                raise SystemExit("the timeline has no bars")
            continue
        pts = re.search(r'<polyline[^>]*points="([^"]+)"', body)
        if not pts or len(pts.group(1).split()) < 2:
            raise SystemExit(f"{want}: no drawn line")


if __name__ == "__main__":
    if sys.argv[1] == "png":
        check_png(sys.argv[2])
    elif sys.argv[1] == "dom":
        check_dom(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit("usage: report_check.py png FILE | dom FILE IDS...")
