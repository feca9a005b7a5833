"""``train_node``: a lifecycle node serving the ``TrainFields`` action (``~/train``): RGB + feature fields.

One goal at a time (modelled on the ROS 2 single-goal action server example, but the running goal
wins): a goal that arrives while another trains is answered at once, aborted with
``success: false`` and the reason in ``message`` (and in the log); the running goal is not
disturbed. Each goal:

1. dataset: ``dataset_path`` must resolve (after symlinks) inside ``data_root``; empty = the latest
   capture, i.e. the folder under ``data_root`` whose ``transforms.json`` changed last.
2. features: ``feature_type`` (empty = parameter ``features.extractor``) ``clip`` | ``dino`` | ``labels``
   | ``none`` picks the extractor of :func:`f3rm_ros.core.features.create_extractor` with the node's
   ``features.*`` settings; ``labels`` needs a synthetic-world dataset (label images + table). Features
   are cached under ``<checkpoint_root>/feature_cache``. A missing model (e.g. no CLIP weights offline)
   ends the goal with the extractor's message; the node keeps serving.
3. training: :class:`f3rm_ros.core.trainer.Trainer` with the ``trainer.*`` parameters for ``num_steps``
   (0 = ``trainer.num_steps``) in a worker thread (the executor keeps serving); the run folder is
   ``<checkpoint_root>/<dataset folder>/<time>-<feature type>``. Feedback goes out at
   ``feedback_rate_hz`` with the trainer's latest progress.
4. cancel: the trainer stops at the next step and writes its last checkpoint; the result (status
   CANCELED) carries ``steps_done`` and that ``checkpoint_path``.
5. success: the checkpoint path is published on ``~/checkpoint`` (``std_msgs/String``,
   transient-local, so a query node started later still gets it).

Lifecycle: goals are served only in the ``active`` state (others are answered with the state);
``autostart`` (default true) configures and activates at start. ``/diagnostics`` at 1 Hz.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from f3rm_ros.action import TrainFields
from f3rm_ros.core.config import param
from f3rm_ros.core.features.configs import FeaturesConfig
from f3rm_ros.core.trainer import TrainerConfig
from f3rm_ros.ros.common import OK, WARN, DiagnosticsPublisher, PathRefused, expand_root, resolve_under_root, run_node
from f3rm_ros.ros.params import declare_config, read_config, validator

__all__ = ["TrainNodeSettings", "TrainBudget", "TrainNode", "FEATURE_TYPES", "latest_dataset", "main"]

FEATURE_TYPES = ("clip", "dino", "labels", "none")


@dataclass
class TrainNodeSettings:
    """Parameters of train_node (besides trainer.* and features.*)."""

    data_root: str = param("~/f3rm_data", "datasets must resolve inside this folder", read_only=True)
    checkpoint_root: str = param("~/f3rm_checkpoints", "run folders and checkpoints are written inside this folder",
                                 read_only=True)
    device: str = param("auto", "torch device: auto (CUDA if available), cpu, cuda, cuda:1, ...")
    torch_threads: int = param(0, "CPU threads for torch (0 = torch's default)", range=(0, 1024))
    feedback_rate_hz: float = param(2.0, "action feedback rate while training", range=(0.1, 100.0))
    dataset_downscale: int = param(1, "shrink dataset images by this integer factor", range=(1, 64))
    dataset_eval_every: int = param(8, "every n-th frame is held out for evaluation (0 = none)", range=(0, 100000))
    cache_features: bool = param(True, "cache extracted 2D features under <checkpoint_root>/feature_cache")
    autostart: bool = param(True, "configure and activate at start (no lifecycle manager needed)", read_only=True)


@dataclass
class TrainBudget:
    """Declared with prefix ``trainer`` beside :class:`TrainerConfig`."""

    num_steps: int = param(30000, "training steps when a goal gives num_steps 0", range=(1, 100_000_000))


def latest_dataset(data_root: str | Path, max_depth: int = 3) -> Path | None:
    """The dataset folder under ``data_root`` whose ``transforms.json`` was modified last (None if none).

    Candidates whose resolved path leaves the root (symlinks) are ignored.
    """
    root = expand_root(data_root)
    best: tuple[float, Path] | None = None
    pattern = "transforms.json"
    for depth in range(max_depth + 1):
        for js in root.glob("/".join(["*"] * depth + [pattern])):
            try:
                real = resolve_under_root(js, root)
                m = real.stat().st_mtime
            except (PathRefused, OSError):
                continue
            if best is None or m > best[0]:
                best = (m, real.parent)
    return None if best is None else best[1]


class _Refused(Exception):
    """A goal that cannot run; the message is the reason given to the client."""


class _Run:
    """State shared between the action's execute callback and the training thread."""

    def __init__(self, goal_id: str, num_steps: int) -> None:
        self.goal_id = goal_id
        self.num_steps = num_steps
        self.stop = threading.Event()
        self.phase = "starting"
        self.progress = None  # latest trainer ProgressInfo
        self.result = None  # TrainResult
        self.error = ""
        self.run_dir: Path | None = None
        self.t0 = time.monotonic()
        self.thread: threading.Thread | None = None


class TrainNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("train_node", namespace=kwargs.pop("namespace", "/f3rm"), **kwargs)
        self.settings: TrainNodeSettings = declare_config(self, TrainNodeSettings)
        # progress every step (the default 10 would make feedback lag by up to 10 steps: slow steps on a CPU)
        self.trainer_config: TrainerConfig = declare_config(self, TrainerConfig, prefix="trainer",
                                                            overrides={"progress_every": 1})
        self.budget: TrainBudget = declare_config(self, TrainBudget, prefix="trainer")
        self.features_config: FeaturesConfig = declare_config(self, FeaturesConfig, prefix="features")
        self.add_on_set_parameters_callback(validator(self, {"trainer": TrainerConfig, "features": FeaturesConfig}))
        self.add_on_set_parameters_callback(self._check_node_settings)
        self.add_post_set_parameters_callback(self._reload_settings)

        self.state = "unconfigured"
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._last_checkpoint = ""
        self._last_outcome = ""
        self.checkpoint_pub = None
        self._group = ReentrantCallbackGroup()
        self._action = ActionServer(self, TrainFields, "~/train", execute_callback=self._execute,
                                    goal_callback=lambda _goal: GoalResponse.ACCEPT,
                                    cancel_callback=self._on_cancel, callback_group=self._group)
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostic_status, callback_group=self._group)
        if self.settings.autostart:
            self.trigger_configure()
            if self.state == "inactive":
                self.trigger_activate()
        self.get_logger().info(f"train_node {self.state}: action {self.resolve_topic_name('~/train')}, data root "
                               f"{self.settings.data_root}, checkpoints {self.settings.checkpoint_root}")

    # ----------------------------------------------------------------------------- parameters
    def _check_node_settings(self, params: list) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        changed = {p.name: p.value for p in params}
        try:
            read_config(self, TrainNodeSettings, "", changed)
            read_config(self, TrainBudget, "trainer", changed)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _reload_settings(self, params: list) -> None:
        self.settings = read_config(self, TrainNodeSettings)
        self.trainer_config = read_config(self, TrainerConfig, "trainer")
        self.budget = read_config(self, TrainBudget, "trainer")
        self.features_config = read_config(self, FeaturesConfig, "features")

    # ------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            for name in ("data_root", "checkpoint_root"):
                root = expand_root(getattr(self.settings, name))
                root.mkdir(parents=True, exist_ok=True)
        except (OSError, PathRefused) as e:
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.checkpoint_pub = self.create_publisher(String, "~/checkpoint", latched)
        self.state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.state = "active"
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_run(wait=False)
        self.state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_run(wait=True)
        if self.checkpoint_pub is not None:
            self.destroy_publisher(self.checkpoint_pub)
            self.checkpoint_pub = None
        self.state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_run(wait=True)
        self.state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Called by run_node on exit: stop a running training (its last checkpoint is written)."""
        self._stop_run(wait=True)

    def _stop_run(self, wait: bool) -> None:
        run = self._run
        if run is not None:
            run.stop.set()
            if wait and run.thread is not None:
                run.thread.join(timeout=60.0)

    # ------------------------------------------------------------------------------- the goal
    def _on_cancel(self, goal_handle: Any) -> CancelResponse:
        self.get_logger().info("cancel requested: training stops at the next step (the last checkpoint is kept)")
        return CancelResponse.ACCEPT

    def _plan(self, req: Any) -> tuple[Path, str, int]:
        """(dataset folder, feature type, steps) for a goal, or :class:`_Refused` with the reason."""
        s = self.settings
        if req.dataset_path.strip():
            try:
                path = resolve_under_root(req.dataset_path, s.data_root, what="dataset path", must_exist=True)
            except PathRefused as e:
                raise _Refused(str(e)) from None
            if path.is_file() and path.name == "transforms.json":
                path = path.parent
        else:
            path = latest_dataset(s.data_root)
            if path is None:
                raise _Refused(f"dataset_path is empty and there is no dataset (transforms.json) under the data root "
                               f"{expand_root(s.data_root)} yet; capture one first")
        if not (path / "transforms.json").is_file():
            raise _Refused(f"dataset path {str(path)!r} holds no transforms.json")
        ftype = (req.feature_type or self.features_config.extractor).strip().lower()
        if ftype not in FEATURE_TYPES:
            raise _Refused(f"feature_type {req.feature_type!r} is not one of {list(FEATURE_TYPES)}")
        steps = int(req.num_steps) or int(self.budget.num_steps)
        return path, ftype, steps

    def _execute(self, goal_handle: Any) -> TrainFields.Result:
        try:
            return self._execute_goal(goal_handle)
        except Exception as e:  # a bug must not take the node down: end the goal with the reason
            self.get_logger().error(f"goal failed unexpectedly: {traceback.format_exc()}")
            if goal_handle.is_active:
                goal_handle.abort()
            return TrainFields.Result(success=False, message=f"internal error: {type(e).__name__}: {e}")

    def _execute_goal(self, goal_handle: Any) -> TrainFields.Result:
        req = goal_handle.request
        gid = bytes(goal_handle.goal_id.uuid).hex()[:8]
        result = TrainFields.Result()
        with self._lock:
            busy = self._run
            if self.state != "active":
                reason = f"train_node is {self.state}, not active; activate it (lifecycle) first"
            elif busy is not None:
                p = busy.progress
                where = f"step {p.step}/{p.total_steps}" if p is not None else busy.phase
                reason = (f"rejected: another training goal ({busy.goal_id}) is running ({where}); one goal at a "
                          "time: cancel it or wait for its result")
            else:
                reason = ""
                try:
                    path, ftype, steps = self._plan(req)
                except _Refused as e:
                    reason = str(e)
                else:
                    run = self._run = _Run(gid, steps)
        if reason:
            self.get_logger().warning(f"goal {gid} refused: {reason}")
            goal_handle.abort()
            result.success, result.message = False, reason
            return result

        self.get_logger().info(f"goal {gid}: training on {path} with {ftype} features for {steps} steps")
        try:
            run.thread = threading.Thread(target=self._train, args=(run, path, ftype, steps), name=f"train-{gid}",
                                          daemon=True)
            run.thread.start()
            period = 1.0 / self.settings.feedback_rate_hz
            while run.thread.is_alive():
                run.thread.join(timeout=period)
                if goal_handle.is_cancel_requested and not run.stop.is_set():
                    run.stop.set()
                if not goal_handle.is_active:  # e.g. the server is shutting down
                    run.stop.set()
                    continue
                try:
                    goal_handle.publish_feedback(self._feedback(run))
                except Exception as e:  # feedback is best effort
                    self.get_logger().warning(f"feedback not sent: {e}", throttle_duration_sec=10.0)
            return self._finish(goal_handle, run, result)
        finally:
            run.stop.set()
            if run.thread is not None and run.thread.is_alive():
                run.thread.join(timeout=60.0)
            with self._lock:
                self._run = None

    def _feedback(self, run: _Run) -> TrainFields.Feedback:
        fb = TrainFields.Feedback(total_steps=run.num_steps, elapsed=time.monotonic() - run.t0)
        p = run.progress
        if p is not None:
            fb.step, fb.loss = int(p.step), float(p.losses.get("total", sum(p.losses.values())))
            names = [k for k in p.losses if k != "total"]
            fb.loss_names, fb.loss_values = names, [float(p.losses[k]) for k in names]
            fb.psnr, fb.eta = float(p.psnr), float(p.eta_s)
        return fb

    def _finish(self, goal_handle: Any, run: _Run, result: TrainFields.Result) -> TrainFields.Result:
        res = run.result
        result.training_time = time.monotonic() - run.t0
        if res is not None:
            result.steps_done = int(res.step)
            result.checkpoint_path = str(res.checkpoint or "")
            ev = res.eval or {}
            psnr, fmse = ev.get("psnr"), ev.get("feature_mse")
            result.final_psnr = float(psnr) if psnr is not None and psnr == psnr else 0.0
            result.final_feature_mse = float(fmse) if fmse is not None else 0.0
        elif run.progress is not None:
            result.steps_done = int(run.progress.step)
        if run.error:
            result.success, result.message = False, run.error
            self.get_logger().error(f"goal {run.goal_id} failed: {run.error}")
            self._last_outcome = f"failed: {run.error[:200]}"
            if goal_handle.is_active:
                goal_handle.abort()
            return result
        if run.stop.is_set() and (res is None or res.stopped):
            result.success = False
            result.message = (f"cancelled at step {result.steps_done}/{run.num_steps}; last checkpoint: "
                              f"{result.checkpoint_path or 'none (stopped before training started)'}")
            self.get_logger().info(f"goal {run.goal_id} {result.message}")
            self._last_outcome = result.message
            if goal_handle.is_active:
                if goal_handle.is_cancel_requested:
                    goal_handle.canceled()
                else:
                    goal_handle.abort()
            return result
        result.success = True
        result.message = (f"trained {result.steps_done} steps in {result.training_time:.1f} s; eval PSNR "
                          f"{result.final_psnr:.2f} dB")
        self._last_checkpoint = result.checkpoint_path
        self._last_outcome = result.message
        if self.checkpoint_pub is not None and result.checkpoint_path:
            self.checkpoint_pub.publish(String(data=result.checkpoint_path))
        self.get_logger().info(f"goal {run.goal_id}: {result.message}; checkpoint {result.checkpoint_path}")
        goal_handle.succeed()
        return result

    # ---------------------------------------------------------------------------- worker thread
    def _train(self, run: _Run, path: Path, ftype: str, steps: int) -> None:
        """Load the dataset, extract features, train; every failure becomes ``run.error``."""
        try:
            import torch

            from f3rm_ros.core.dataset import load_dataset
            from f3rm_ros.core.device import resolve_device
            from f3rm_ros.core.trainer import Trainer

            s = self.settings
            if s.torch_threads:
                torch.set_num_threads(s.torch_threads)
            device = resolve_device(s.device)
            run.phase = "loading dataset"
            ds = load_dataset(path, downscale=s.dataset_downscale, eval_every=s.dataset_eval_every)
            feats, info = None, {"type": "none"}
            if ftype != "none":
                from f3rm_ros.core.features import create_extractor, extract_dataset_features

                run.phase = f"extracting {ftype} features"
                cfg = dataclasses.replace(self.features_config, extractor=ftype)
                extractor = create_extractor(cfg, label_table=ds.labels_table or None)
                cache = expand_root(s.checkpoint_root) / "feature_cache" if s.cache_features else None
                feats = extract_dataset_features(extractor, ds, cache, progress=False)
                info = extractor.cache_key()
            if run.stop.is_set():
                return
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = resolve_under_root(Path(path.name) / f"{stamp}-{ftype}-{run.goal_id}", s.checkpoint_root,
                                         what="run folder")
            run.run_dir = run_dir
            run.phase = "training"
            trainer = Trainer(self.trainer_config, ds, feats, device, run_dir=run_dir, extractor_info=info)

            def on_progress(p: Any) -> None:
                run.progress = p

            run.result = trainer.train(steps, on_progress=on_progress, should_stop=run.stop.is_set)
            run.phase = "done"
        except Exception as e:  # every failure is reported in the result; the node keeps serving
            run.error = f"{type(e).__name__}: {e}"
            self.get_logger().debug(traceback.format_exc())
        finally:  # give GPU memory back (the query node may share the process and the GPU)
            trainer = feats = None
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # ---------------------------------------------------------------------------- diagnostics
    def _diagnostic_status(self) -> tuple[int, str, dict]:
        run = self._run
        values: dict[str, Any] = {"state": self.state, "last_checkpoint": self._last_checkpoint,
                                  "last_outcome": self._last_outcome}
        if run is not None:
            values.update({"goal": run.goal_id, "phase": run.phase})
            if run.progress is not None:
                values.update({"step": run.progress.step, "total_steps": run.progress.total_steps,
                               "psnr": run.progress.psnr, "eta_s": run.progress.eta_s})
            return OK, f"training ({run.phase})", values
        if self.state != "active":
            return WARN, f"lifecycle state {self.state}", values
        if self._last_outcome.startswith("failed"):
            return WARN, "idle; last goal failed", values
        return OK, "idle", values


def main(args: list[str] | None = None) -> int:
    """``ros2 run f3rm_ros train_node`` / ``scripts/nodes/train_node``."""
    return run_node(TrainNode, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
