"""What a query server served last, kept on disk so that a restarted server comes back as it was.

The query node records the checkpoint it serves after every successful load (``~/load_field``, a checkpoint
announced by the train node, a restore) in a small JSON file, written atomically (:mod:`f3rm_ros.core.io`), and
reads it when it starts. The file also holds the last checkpoint *announcement* the server handled, so that the
train node's transient-local announcement, which a restarted server receives again, does not replace a field
loaded by hand after it.

    {"checkpoint": "/abs/path/step-0001000.ckpt", "announced": "/abs/path/...", "saved": "2026-12-06T11:00:00Z"}
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from f3rm_ros.core.io import atomic_write_json

__all__ = ["ServedField", "read_served", "write_served"]


@dataclass
class ServedField:
    checkpoint: str = ""  # the checkpoint served last ("" = none)
    announced: str = ""  # the last checkpoint announcement handled ("" = none)
    saved: str = ""  # UTC time of the record, ISO 8601


def read_served(path: str | Path) -> tuple[ServedField | None, str]:
    """The record at ``path``, or ``(None, why)``: no file yet ("" as the reason), unreadable or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, ""
    except (OSError, ValueError) as e:
        return None, f"{path}: unreadable ({type(e).__name__}: {e})"
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("checkpoint", "announced")):
        return None, f"{path}: not a served-field record (expected checkpoint and announced strings)"
    return ServedField(data.get("checkpoint", ""), data.get("announced", ""), str(data.get("saved", ""))), ""


def write_served(path: str | Path, record: ServedField) -> Path:
    """Write ``record`` to ``path`` atomically (``saved`` is set to now)."""
    record.saved = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return atomic_write_json(path, asdict(record))
