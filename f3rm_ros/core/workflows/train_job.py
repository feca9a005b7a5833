"""Run :func:`~f3rm_ros.core.workflows.train_scene.train_scene` in a worker thread (the train node's goals)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from f3rm_ros.core.training import ProgressInfo
from f3rm_ros.core.workflows.train_scene import TrainSceneRequest, TrainSceneResult, train_scene

__all__ = ["TrainJob"]

log = logging.getLogger(__name__)


class TrainJob:
    """:func:`train_scene` in a worker thread, for a server that keeps serving while it trains (the train node).

    ``phase`` and ``progress`` (the latest ``ProgressInfo``) are there for feedback, :meth:`stop` asks the run to
    end at the next step (its last checkpoint is written), and once the thread has ended ``result`` holds the
    :class:`TrainSceneResult` or ``error`` the reason (every exception becomes ``"<Type>: <message>"``). The
    request's own callbacks are still called. CUDA's cached memory is given back at the end.
    """

    def __init__(self, request: TrainSceneRequest, name: str = "train",
                 runner: Callable[[TrainSceneRequest], Any] = train_scene) -> None:
        self.request = request
        self.runner = runner  # train_scene, or another workflow with its request and result (a refresh)
        self.name = name
        self.phase = "starting"
        self.progress: ProgressInfo | None = None
        self.result: TrainSceneResult | None = None
        self.error = ""
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"train-{name}", daemon=True)

    def start(self) -> TrainJob:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has ended."""
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def where(self) -> str:
        """Where the run is: "step 12/500", or the phase before training."""
        p = self.progress
        return f"step {p.step}/{p.total_steps}" if p is not None else self.phase

    def outcome(self) -> tuple[str, str]:
        """``("failed" | "cancelled" | "done", message)`` once the thread has ended (a run that reached its
        budget while a stop was asked for counts as done)."""
        res = self.result
        if self.error or res is None:
            return "failed", self.error or "the training job has not finished"
        if self.stopping and res.stopped:
            return "cancelled", (f"cancelled at step {res.step}/{self.request.num_steps}; last checkpoint: "
                                 f"{res.checkpoint or 'none (stopped before training started)'}")
        psnr = res.eval.get("psnr")
        return "done", (f"trained {res.step} steps in {time.monotonic() - self.t0:.1f} s; eval PSNR "
                        f"{psnr if psnr is not None and psnr == psnr else 0.0:.2f} dB")

    def _run(self) -> None:
        req = self.request

        def on_phase(p: str) -> None:
            self.phase = p
            if req.on_phase is not None:
                req.on_phase(p)

        def on_progress(p: ProgressInfo) -> None:
            self.progress = p
            if req.on_progress is not None:
                req.on_progress(p)

        def should_stop() -> bool:
            return self._stop.is_set() or (req.should_stop is not None and bool(req.should_stop()))

        try:
            self.result = self.runner(dataclasses.replace(req, on_phase=on_phase, on_progress=on_progress,
                                                          should_stop=should_stop, keep_trainer=False))
        except Exception as e:  # every failure is the job's outcome, not the server's end
            self.error = f"{type(e).__name__}: {e}"
            log.debug("training job failed: %s", traceback.format_exc())
        finally:  # give GPU memory back (a query node may share the process and the GPU)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
