#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/<target>/ from tests/fixtures/llm.

sse_parser:          [max selector, split header, sizes.., body] for each stream body, once with
                     the proxy's limit (0xFF) and once with 256 bytes (0x8F).
response_reader:     [setup, split header, sizes.., body] for each body, as its case file says
                     (format, content type, status); each JSON body also gzip-, zlib-deflate-,
                     raw-deflate- and brotli-encoded with the matching content-encoding.
request_and_rewrite: each request body as it is. Seeds added by hand (edge cases the target
                     found) stay: this script only writes the fixture-named files.
"""
import glob
import gzip
import json
import os
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "..", "tests", "fixtures", "llm")
FORMATS = {"chat_completions": 0, "responses": 1, "messages": 2}
# Index into response_reader's CONTENT_TYPES.
CONTENT_TYPES = {"text/event-stream": 0, "application/json": 1, "text/html": 4, None: 5}
# response_reader's `setup / 18` variants.
PLAIN, ERROR_500, GZIP, DEFLATE, BROTLI = 0, 10, 11, 12, 13
# Split header 0x02: three size bytes follow (1, 7, 64); 0x0A also sets flag bit 0, so
# response_reader finishes a second pair of readers with finish(false).
SPLIT = bytes([0x02, 1, 7, 64])
SPLIT_ALSO_CUT = bytes([0x0A, 1, 7, 64])


def brotli_stored(data: bytes) -> bytes:
    """A valid brotli stream of uncompressed meta-blocks (no encoder needed)."""
    bits = []

    def put(value, n):
        bits.extend((value >> i) & 1 for i in range(n))

    def align():
        while len(bits) % 8:
            bits.append(0)

    def flush():
        out = bytearray()
        for i in range(0, len(bits), 8):
            out.append(sum(b << j for j, b in enumerate(bits[i:i + 8])))
        bits.clear()
        return bytes(out)

    out = bytearray()
    put(0, 1)  # WBITS = 16
    for i in range(0, len(data), 65536):
        block = data[i:i + 65536]
        put(0, 1)  # ISLAST = 0
        put(0, 2)  # MNIBBLES = 4
        put(len(block) - 1, 16)  # MLEN - 1
        put(1, 1)  # ISUNCOMPRESSED
        align()
        out += flush() + block
    put(1, 1)  # ISLAST
    put(1, 1)  # ISLASTEMPTY
    align()
    return bytes(out + flush())


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def write(target, name, data):
    os.makedirs(os.path.join(HERE, "seeds", target), exist_ok=True)
    with open(os.path.join(HERE, "seeds", target, name), "wb") as f:
        f.write(data)


for case in sorted(glob.glob(os.path.join(FX, "*.case.json"))):
    name = os.path.basename(case)[: -len(".case.json")]
    c = json.load(open(case))
    body = open(os.path.join(FX, c["body"]), "rb").read()
    ct = c.get("content_type")
    kind = FORMATS[c["format"]] + 3 * CONTENT_TYPES.get(ct, 5)
    variant = PLAIN if c["status"] == 200 else ERROR_500
    write("response_reader", name, bytes([kind + 18 * variant]) + SPLIT_ALSO_CUT + body)
    if ct == "application/json" and c["status"] == 200:
        for suffix, variant, encoded in [
            ("gzip", GZIP, gzip.compress(body, mtime=0)),
            ("deflate", DEFLATE, zlib.compress(body)),
            ("raw-deflate", DEFLATE, raw_deflate(body)),
            ("br", BROTLI, brotli_stored(body)),
        ]:
            write("response_reader", f"{name}.{suffix}", bytes([kind + 18 * variant]) + SPLIT + encoded)
    if ct == "text/event-stream":
        write("sse_parser", name, b"\xff" + SPLIT + body)
        write("sse_parser", f"{name}.max256", b"\x8f" + SPLIT + body)
    request = os.path.join(FX, name + ".request.json")
    if os.path.exists(request):
        write("request_and_rewrite", name, open(request, "rb").read())
