"""The run folders of one dataset under a checkpoint root: which can be resumed, how far each got (ROS-free).

The train node writes each goal's run into ``<checkpoint_root>/<dataset folder>/<time>-<features>-<goal>``
(layout: :mod:`~f3rm_ros.core.workflows.train_scene`). A run whose ``run.json`` has no ``result`` was
interrupted (the process died), one whose result says ``stopped`` was cancelled; either can be resumed from
its newest ``checkpoints/step-*.ckpt`` to its ``num_steps``. A finished run is not resumed.

    runs = dataset_runs(root / "scan")          # newest first
    r = resumable_run(root / "scan")            # the newest interrupted or cancelled run, or None
    r.run_dir, r.checkpoint, r.step, r.num_steps
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from f3rm_ros.core.checkpoint import latest_checkpoint

__all__ = ["RunState", "dataset_runs", "resumable_run", "run_state"]

_STEP = re.compile(r"step-(\d+)\.ckpt$")


@dataclass
class RunState:
    run_dir: Path
    checkpoint: Path | None  # newest resumable checkpoint (None: none written)
    step: int  # of that checkpoint (0 without one)
    num_steps: int  # the step count the run was asked to reach (0 if unknown)
    finished: bool  # run.json has a result that was not a cancel
    info: dict[str, Any]  # run.json ({} if unreadable)

    @property
    def resumable(self) -> bool:
        return not self.finished and self.checkpoint is not None

    @property
    def feature_type(self) -> str:
        return str((self.info.get("features") or {}).get("type", ""))

    def describe(self) -> str:
        state = "finished" if self.finished else "interrupted" if "result" not in self.info else "cancelled"
        return f"{self.run_dir.name} ({state} at step {self.step}/{self.num_steps or '?'})"


def run_state(run_dir: str | Path) -> RunState:
    """What ``run_dir`` holds (a missing or unreadable ``run.json`` counts as an interrupted run)."""
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / "run.json").read_text())
        info = info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        info = {}
    ckpt = latest_checkpoint(run_dir)
    m = _STEP.search(ckpt.name) if ckpt is not None else None
    result = info.get("result") if isinstance(info.get("result"), dict) else None
    return RunState(run_dir, ckpt, int(m.group(1)) if m else 0, int(info.get("num_steps") or 0),
                    result is not None and not result.get("stopped", False), info)


def dataset_runs(dataset_dir: str | Path) -> list[RunState]:
    """Every run folder (one with ``run.json`` or ``checkpoints/``) under ``dataset_dir``, newest first."""
    d = Path(dataset_dir)
    if not d.is_dir():
        return []
    dirs = [p for p in d.iterdir() if p.is_dir() and ((p / "run.json").is_file() or (p / "checkpoints").is_dir())]
    dirs.sort(key=lambda p: ((p / "run.json").stat().st_mtime if (p / "run.json").exists() else 0.0, p.name),
              reverse=True)
    return [run_state(p) for p in dirs]


def resumable_run(dataset_dir: str | Path) -> RunState | None:
    """The newest interrupted or cancelled run under ``dataset_dir`` that has a checkpoint, or None."""
    return next((r for r in dataset_runs(dataset_dir) if r.resumable), None)
