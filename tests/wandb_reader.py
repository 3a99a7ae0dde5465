"""Read a W&B offline run file (``run-*.wandb``) back, for tests.

wandb has no Python reader for it. The format: a 7-byte header (``:W&B``, a 2-byte magic,
a 1-byte version), then 32 KiB blocks of LevelDB-log framed records (4-byte crc32c,
2-byte little-endian length, 1-byte type: FULL, FIRST, MIDDLE, LAST), each record a
``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    position, pending = HEADER, b""
    while position + 7 <= len(data):
        room = BLOCK - (position % BLOCK)
        if room < 7:  # block trailer: padding
            position += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record


def read_run(run_dir: Path, settle_s: float = 15.0) -> dict:
    """history rows, config, summary, run name/project, define_metric calls and exit code.

    ``run.finish()`` can return before W&B's service process has written the last records, so
    a file without its exit record is read again until it has one, or until its size has not
    changed for a second (a run that was killed has none), within ``settle_s``."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    deadline, size, since = time.monotonic() + settle_s, -1, time.monotonic()
    while True:
        try:
            result = _parse(path)
        except Exception:  # a record half-written right now
            result = None
        now = time.monotonic()
        if path.stat().st_size != size:
            size, since = path.stat().st_size, now
        if (result is not None and result["exit_code"] is not None) or now - since > 1.0 or now > deadline:
            return result if result is not None else _parse(path)
        time.sleep(0.05)


def _parse(path: Path) -> dict:
    result: dict = {"history": [], "config": {}, "metrics": [], "exit_code": None, "summary": {}}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            result["name"], result["project"] = record.run.display_name, record.run.project
            for item in record.run.config.update:
                result["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                result["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            result["history"].append(row)
        elif kind == "metric":
            result["metrics"].append(
                (record.metric.name or record.metric.glob_name, record.metric.step_metric)
            )
        elif kind == "summary":
            for item in record.summary.update:
                result["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            result["exit_code"] = record.exit.exit_code
    return result
