"""The training step as CUDA graphs: capture, replay, and the fall-back to the eager step.

Two graphs (proposal nets updated or not; the ``key``) hold the whole step: ray batch (random numbers
from the trainer's generator, registered with the graph so every replay draws new ones), forward under
autocast, losses, backward, the grad scaler's inf check and scale update, and fused Adam
(``capturable``; the learning rate read from a device tensor). What changes from step to step outside
the graph: the proposal annealing exponent and the learning rate (two device fills before the replay,
:attr:`CudaGraphStep.anneal_t` and :attr:`CudaGraphStep.lr_t`), and which of the two graphs runs. The
first :attr:`CudaGraphStep.WARMUP_STEPS` steps of each key run eagerly on a side stream (lazy state,
kernel compilation), the next one captures the graph and replays it. Off CUDA the body runs eagerly
(so the graph path is testable on the CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["CudaGraphStep", "cuda_graphs_decision", "reset_amp_step_state"]

log = logging.getLogger(__name__)


def cuda_graphs_decision(mode: str, device: torch.device, hashgrid_backends: dict[str, str]) -> tuple[bool, str]:
    """Whether the trainer captures its step as CUDA graphs, and why (``cuda_graphs`` auto | on | off).

    Needs a CUDA device, ``torch.cuda.CUDAGraph.register_generator_state`` (the step draws its random
    numbers from the trainer's own generator), and every hash grid on the triton backend (the torch
    reference builds small index tensors on the host every call, which a capture does not allow; tcnn
    is untested here).

    Raises:
        ValueError: ``on`` where it is not possible, or an unknown mode.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"cuda_graphs must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False, "cuda_graphs: off"
    why = None
    if device.type != "cuda":
        why = f"device {device} is not CUDA"
    elif not hasattr(torch.cuda, "CUDAGraph") or not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        why = f"torch {torch.__version__} has no CUDAGraph.register_generator_state"
    else:
        other = {k: v for k, v in hashgrid_backends.items() if v != "triton"}
        if other:
            why = f"hash grids not on the triton backend: {other}"
    if why is None:
        return True, f"cuda_graphs: {mode}"
    if mode == "on":
        raise ValueError(f"cuda_graphs: on, but the training step cannot be captured here: {why}")
    return False, f"cuda_graphs: auto -> eager ({why})"


def reset_amp_step_state(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> None:
    """Forget what an interrupted mixed-precision step left behind (a failed graph capture), keeping the scale.

    * The scaler's per-optimizer record of the step (unscaled / stepped, the inf checks): through the public
      ``update(new_scale=...)`` with the current scale (it clears that record and sets the scale to itself;
      the growth tracker is untouched).
    * The ``grad_scale`` / ``found_inf`` attributes that ``GradScaler.step`` sets on an optimizer that
      unscales inside its own step (fused Adam) and deletes after it: an interrupted step leaves them,
      and the next eager step would read them. No public API removes them; this is the one place that
      touches them.
    """
    if scaler.is_enabled():
        try:
            scaler.update(new_scale=scaler.get_scale())
        except AssertionError:  # the scale was never set up (no step scaled yet): nothing was recorded either
            pass
    for attr in ("grad_scale", "found_inf"):
        if hasattr(optimizer, attr):
            delattr(optimizer, attr)


class CudaGraphStep:
    """Captures a training-step body as CUDA graphs (one per key) and replays them (see the module docstring).

    Args:
        device: the training device.
        generator: the generator the body draws its random numbers from.
        mode: the ``cuda_graphs`` setting (auto | on | off); ``on`` re-raises a failed capture.
        active: whether to use graphs (:func:`cuda_graphs_decision`); ``reason``: why.
        lr: the initial learning rate (fills :attr:`lr_t`).
    """

    WARMUP_STEPS = 2  # eager steps (on a side stream) before each graph is captured

    def __init__(self, device: torch.device, generator: torch.Generator, mode: str, active: bool, reason: str,
                 lr: float):
        self.device, self.generator, self.mode = device, generator, mode
        self.active, self.reason = False, reason
        self.captured: dict[Any, Any] = {}  # key -> torch.cuda.CUDAGraph
        self.outputs: dict[Any, Tensor] = {}  # key -> the packed losses written by that graph
        self.warm: dict[Any, int] = {}  # key -> eager warm-up steps run
        self.replays = 0
        self._side_stream = None
        self._lr0 = float(lr)
        self.anneal_t: Tensor | None = None
        self.lr_t: Tensor | None = None
        if active:
            self.activate()

    def activate(self) -> None:
        """Use graphs from the next step: make the device scalars a captured step reads (annealing exponent,
        learning rate). On the CPU (tests) the body then runs eagerly through the same tensors."""
        self.active = True
        self.anneal_t = torch.ones((), dtype=torch.float32, device=self.device)
        self.lr_t = torch.full((), self._lr0, dtype=torch.float32, device=self.device)

    def run(self, key: Any, body: Callable[[], Tensor], optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, anneal: float, step: int = 0) -> Tensor | None:
        """One step through the graph for ``key`` (capturing it when due).

        Args:
            key: which graph (the trainer: whether the proposal nets are updated this step).
            body: the whole step (batch, forward, backward, optimiser step) returning the packed losses; it
                must read the annealing exponent from :attr:`anneal_t` and let Adam read :attr:`lr_t`.
            optimizer: its first group's ``lr`` goes to :attr:`lr_t`; during capture every group reads it.
            scaler: reset with the optimiser if a capture fails.
            anneal: this step's annealing exponent (goes to :attr:`anneal_t`).
            step: the step number (for the log and :attr:`reason`).

        Returns:
            the packed losses (overwritten by the next replay), or None when the capture failed under
            ``cuda_graphs: auto`` (logged; :attr:`active` is then False and the caller steps eagerly).
        """
        self.anneal_t.fill_(anneal)
        self.lr_t.fill_(float(optimizer.param_groups[0]["lr"]))
        if self.device.type != "cuda":  # no capture off CUDA: the graph body runs eagerly (CPU tests)
            return body()
        graph = self.captured.get(key)
        if graph is None and self.warm.get(key, 0) < self.WARMUP_STEPS:
            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream(device=self.device)
            cur = torch.cuda.current_stream(self.device)
            self._side_stream.wait_stream(cur)
            with torch.cuda.stream(self._side_stream):
                packed = body()
            cur.wait_stream(self._side_stream)
            self.warm[key] = self.warm.get(key, 0) + 1
            return packed
        if graph is None:
            try:
                graph = self._capture(key, body, optimizer, step)
            except Exception as e:  # noqa: BLE001 - auto falls back to the eager step, on re-raises
                self._capture_failed(e, optimizer, scaler, step)
                if self.mode == "on":
                    raise
                return None
        graph.replay()
        self.replays += 1
        return self.outputs[key]

    def _capture(self, key: Any, body: Callable[[], Tensor], optimizer: torch.optim.Optimizer, step: int) -> Any:
        """Capture ``body`` into a new CUDA graph for ``key`` (sharing the memory pool of the other one)."""
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        pool = next(iter(self.captured.values())).pool() if self.captured else None
        groups = optimizer.param_groups
        saved = [(g["lr"], g["capturable"]) for g in groups]
        optimizer.zero_grad(set_to_none=True)  # gradients are allocated (and written) inside the graph
        dev = self.device.index if self.device.index is not None else torch.cuda.current_device()
        gens = [self.generator, torch.cuda.default_generators[dev]]  # ours, and the one torch registers itself
        rng_before = [gen.clone_state() for gen in gens]
        try:
            for g in groups:  # Adam reads the lr tensor on every replay; capturable allows capture
                g["lr"], g["capturable"] = self.lr_t, True
            with torch.cuda.graph(graph, pool=pool):
                packed = body()
        except BaseException:
            # an interrupted capture leaves the registered generators in capture mode (their next eager draw
            # raises "Offset increment outside graph capture"): give them back their state from before it
            for gen, state in zip(gens, rng_before, strict=True):
                gen.graphsafe_set_state(state)
            raise
        finally:
            for g, (lr, cap) in zip(groups, saved, strict=True):
                g["lr"], g["capturable"] = lr, cap
        self.captured[key] = graph
        self.outputs[key] = packed
        log.info("captured the training step (key %s) as a CUDA graph at step %d", key, step)
        return graph

    def _capture_failed(self, err: Exception, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                        step: int) -> None:
        """Undo a failed capture; the caller continues with the eager step (cuda_graphs: auto)."""
        self.active = False
        self.reason = f"capture failed, eager step from step {step}: {type(err).__name__}: {err}"
        log.warning("CUDA graph %s", self.reason)
        self.drop(optimizer)
        reset_amp_step_state(scaler, optimizer)

    def drop(self, optimizer: torch.optim.Optimizer) -> None:
        """Forget captured graphs (their pointers go stale when state tensors are replaced, e.g. on load)."""
        self.captured.clear()
        self.outputs.clear()
        self.warm.clear()
        optimizer.zero_grad(set_to_none=True)
