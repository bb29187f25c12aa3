"""Read an offline wandb run's `.wandb` file back (test helper).

wandb >= 0.19 writes runs from its Go core and no longer ships a Python reader. The file is a LevelDB-
style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records, each with a 4-byte
CRC, a 2-byte little-endian length and a 1-byte type (1 full, 2 first, 3 middle, 4 last); the payloads
are `wandb_internal_pb2.Record` protobufs.
"""

import json
import struct

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7


def records(path):
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", "not a wandb log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history_and_config(path):
    """(list of history rows as dicts, config dict) from a run file."""
    rows, config = [], {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
        elif kind in ("config", "run"):
            for item in (r.config if kind == "config" else r.run.config).update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows, config


def exit_code(path):
    """The exit code the run was finished with (None: no exit record)."""
    codes = [r.exit.exit_code for r in records(path) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None
