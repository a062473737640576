#!/usr/bin/env python3
"""Writes the seed inputs of the pgoutput_decoder fuzz target: framed sequences of
protocol-version-1 messages shaped like the ones PostgreSQL 15 sends (see
tests/postgres.rs), so the fuzzer starts from valid streams instead of searching for tags."""
import os
import struct

def s(text): return text.encode() + b"\0"
def tup(*values):
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None: out += b"n"
        elif v == "<toast>": out += b"u"
        else: out += b"t" + struct.pack(">i", len(v.encode())) + v.encode()
    return out

relation = b"R" + struct.pack(">I", 16385) + s("public") + s("items") + b"d" + struct.pack(">h", 4) \
    + b"\x01" + s("id") + struct.pack(">Ii", 20, -1) \
    + b"\x00" + s("flag") + struct.pack(">Ii", 16, -1) \
    + b"\x00" + s("doc") + struct.pack(">Ii", 3802, -1) \
    + b"\x00" + s("body") + struct.pack(">Ii", 25, -1)
typ = b"Y" + struct.pack(">I", 16390) + s("public") + s("mood")
begin = b"B" + struct.pack(">QqI", 0x1947A70, 774_000_000_000_000, 730)
commit = b"C\0" + struct.pack(">QQq", 0x1947A70, 0x1947AA0, 774_000_000_000_000)
insert = b"I" + struct.pack(">I", 16385) + b"N" + tup("1", "t", '{"a": [1, 2.5, null]}', "x" * 40)
update = b"U" + struct.pack(">I", 16385) + b"K" + tup("1", None, None, None) + b"N" + tup("2", "f", "{}", "<toast>")
delete = b"D" + struct.pack(">I", 16385) + b"O" + tup("2", "f", "[]", "y")
truncate = b"T" + struct.pack(">i", 1) + b"\x02" + struct.pack(">I", 16385)
message = b"M\x01" + struct.pack(">Q", 0x1947C48) + s("app") + struct.pack(">i", 6) + b"marker"
origin = b"O" + struct.pack(">Q", 0xABCDEF) + s("upstream")

def frame(*messages):
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)

seeds = {
    "insert_update_delete": frame(typ, relation, begin, insert, update, delete, commit),
    "truncate_message_origin": frame(relation, begin, origin, truncate, message, commit),
    "single_relation": relation,
    "single_update": update,
}
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pgoutput_decoder")
for name, data in seeds.items():
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)
