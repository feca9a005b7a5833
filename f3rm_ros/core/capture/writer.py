"""A bounded background writer: disk writes off the producer's thread (a ROS executor), one at a time, in order."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["BackgroundWriter", "WriteJob"]


@dataclass(eq=False)
class WriteJob:
    """One unit of work for :class:`BackgroundWriter`.

    Attributes:
        run: does the write; its return value goes to ``on_done``.
        kind: a tag counted separately in :meth:`BackgroundWriter.pending` (e.g. "frame", "meta").
        on_done: called with the result on the writer thread after a successful ``run``.
        on_error: called with the exception on the writer thread when ``run`` raises.
        on_discard: called (on the discarding thread) when the job is dropped unrun by :meth:`discard`.
    """

    run: Callable[[], Any]
    kind: str = "frame"
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_discard: Callable[[], None] | None = None


_BARRIER = "\0barrier"  # kind of the internal markers of BackgroundWriter.barrier


class BackgroundWriter:
    """Runs write jobs one at a time, in submission order, on its own thread (a bounded FIFO).

    The producer (a ROS executor thread) never waits for the disk: :meth:`submit` returns False at
    once when ``max_pending`` jobs of the same kind are already waiting or running, so the caller can
    reject the frame with a reason. An exception in a job is passed to its ``on_error`` and counted;
    the thread keeps running. Callbacks run on the writer thread (before the job stops counting as
    pending); an exception in a callback is counted in ``callback_errors`` and otherwise ignored.

    Args:
        max_pending: jobs of one kind waiting or being written at most (>= 1).
        name: thread name.

    Attributes:
        delay_s: test hook, settable only in-process: seconds slept before each job (a slow disk).
        hold: test hook, settable only in-process: while it is a ``threading.Event`` that is not set,
            no job is started (jobs stay queued: a disk that does not answer; barriers still pass when
            they reach the head of the queue); None (default) = no hold.
        done, failed: jobs finished / raised so far.
        last_duration_s, max_duration_s: wall time of the last / slowest job (without ``delay_s``).
    """

    def __init__(self, max_pending: int = 32, name: str = "f3rm-writer") -> None:
        if int(max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = int(max_pending)
        self.delay_s = 0.0
        self.hold: threading.Event | None = None
        self.done = 0
        self.failed = 0
        self.callback_errors = 0
        self.last_duration_s = 0.0
        self.max_duration_s = 0.0
        self._queue: collections.deque[WriteJob] = collections.deque()
        self._running: WriteJob | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- producer side
    def submit(self, job: WriteJob, force: bool = False) -> bool:
        """Queue ``job``; False (job not queued) when full or closed.

        Args:
            force: queue even when full (small metadata writes that must not be lost).
        """
        with self._cond:
            if self._closed or (not force and self._count_locked(job.kind) >= self.max_pending):
                return False
            self._queue.append(job)
            self._cond.notify_all()
            return True

    def barrier(self) -> threading.Event | None:
        """An event set once every job queued before this call has run (None if closed).

        Lets a caller wait for "everything so far" while new jobs keep coming (a FIFO marker; it is not
        subject to ``delay_s`` and does not count as a job).
        """
        ev = threading.Event()
        with self._cond:
            if self._closed:
                return None
            self._queue.append(WriteJob(ev.set, kind=_BARRIER))
            self._cond.notify_all()
        return ev

    def pending(self, kind: str | None = None) -> int:
        """Jobs queued or being written (only those of ``kind`` when given)."""
        with self._cond:
            return self._count_locked(kind)

    def _count_locked(self, kind: str | None) -> int:
        jobs = list(self._queue) + ([self._running] if self._running is not None else [])
        return sum(1 for j in jobs if j.kind != _BARRIER and (kind is None or j.kind == kind))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being written; True if so within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._queue or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def discard(self, kind: str | None = None) -> int:
        """Drop queued jobs (of ``kind``) that have not started; the one being written finishes.

        Returns:
            How many were dropped (their ``on_discard`` is called).
        """
        with self._cond:
            keep, dropped = collections.deque(), []
            for j in self._queue:
                (dropped if j.kind != _BARRIER and (kind is None or j.kind == kind) else keep).append(j)
            self._queue = keep
            self._cond.notify_all()
        for j in dropped:
            self._call(j.on_discard)
        return len(dropped)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, write what is queued (at most ``timeout`` seconds), stop the thread.

        Returns:
            True if everything queued was written (or failed) in time; on False the jobs not yet
            started are dropped and the one running finishes on its own (a daemon thread: it never
            blocks process exit; a job cut by the exit is lost whole if it writes atomically).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        ok = self.wait_idle(timeout)
        if ok:
            self._thread.join(timeout=1.0)
        else:
            self.discard()
        return ok

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def busy(self) -> bool:
        """Whether a job is being written right now."""
        with self._cond:
            return self._running is not None and self._running.kind != _BARRIER

    # -- writer thread
    def _call(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            self.callback_errors += 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:  # closed and empty
                        self._cond.notify_all()
                        return
                    hold = self.hold
                    if self._queue[0].kind == _BARRIER or hold is None or hold.is_set():
                        break
                    self._cond.wait(0.05)  # held: look again (the event does not notify this condition)
                job = self._running = self._queue.popleft()
            if job.kind == _BARRIER:
                job.run()
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
                continue
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            t0 = time.perf_counter()
            try:
                result = job.run()
            except BaseException as e:  # disk full, permissions, a bad frame: reported, never the end of the thread
                self.last_duration_s = time.perf_counter() - t0
                self.failed += 1
                self._call(job.on_error, e)
            else:
                self.last_duration_s = time.perf_counter() - t0
                self.done += 1
                self._call(job.on_done, result)
            self.max_duration_s = max(self.max_duration_s, self.last_duration_s)
            with self._cond:
                self._running = None
                self._cond.notify_all()
