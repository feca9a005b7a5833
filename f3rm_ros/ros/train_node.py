"""``train_node``: a lifecycle node serving the ``TrainFields`` action (``~/train``): RGB + feature fields.

A goal becomes a :class:`~f3rm_ros.core.workflows.train_scene.TrainSceneRequest` run as a ``TrainJob`` (the core's
one training workflow; the run folder's layout is documented there). One goal at a time (modelled on the ROS 2
single-goal action server example, but the running goal wins): a goal that arrives while another trains is
aborted at once, ``success: false`` and the reason in ``message`` (and in the log). Each goal:

1. dataset: ``dataset_path`` must resolve (after symlinks) inside ``data_root``; empty = the latest capture,
   i.e. the folder under ``data_root`` whose ``transforms.json`` changed last.
2. features: ``feature_type`` (empty = parameter ``features.extractor``) ``clip`` | ``dino`` | ``labels`` |
   ``none``, with the node's ``features.*`` settings (``labels``: synthetic-world datasets only), cached under
   ``<checkpoint_root>/feature_cache``. A missing model (no CLIP weights offline) ends the goal with its message.
3. training: the ``trainer.*`` parameters for ``num_steps`` (0 = ``trainer.num_steps``) in a worker thread (the
   executor keeps serving) into ``<checkpoint_root>/<dataset folder>/<time>-<feature type>-<goal>``; feedback
   at ``feedback_rate_hz`` with the latest progress, and once more with the last before the result.
4. cancel: the trainer stops at the next step and writes its last checkpoint; the result (status CANCELED)
   carries ``steps_done`` and that ``checkpoint_path``.
4b. resume (goal field ``resume``): ``"latest"`` continues the newest interrupted (the node died) or cancelled
   run of the dataset from its last checkpoint, in its own run folder, to ``num_steps`` (0 = the run's own
   total) with its own feature type and settings; a run folder or checkpoint under ``checkpoint_root`` names
   one. A new run (``resume`` empty) on a dataset that already has a run further along says so in the log and
   in its result message: its checkpoints become the newest files under the root (what the query node's
   ``load_field("")`` picks) while they are behind the other run's.
4c. refresh (goal field ``refresh_from``, issue 18): after the scene changed and a capture APPEND added frames of
   it, the named field (a checkpoint under ``checkpoint_root``, trained on this dataset) is fine-tuned on the
   dataset's newest frames (highest ``scene_version``) plus the old frames that see none of ``changed_boxes``, for
   ``num_steps`` (0 = ``refresh_steps``) with the same feedback and cancel
   (:func:`~f3rm_ros.core.workflows.refresh.refresh_scene`), into ``<time>-refresh-<goal>``; a dataset without
   appended frames, or another dataset than the field's, is refused with the reason. With ``edits_path`` (the query
   node's saved edit stack, under ``checkpoint_root``; ``refresh_from`` "" = the field it was made on) the changed
   places are the edits' own old and new places (:func:`~f3rm_ros.core.workflows.edit_refresh.refresh_with_edits`),
   after those the field itself was refreshed with; a stack that is malformed or of another field is refused.
   How the refresh fine-tunes is the ``refresh.*`` parameters (``RefreshConfig`` of ``core/workflows/refresh.py``,
   read when a goal starts; on a 2-core CPU set ``REFRESH_CPU`` of ``core/presets.py``: ``refresh.near_m`` 0,
   ``refresh.lr_scale`` 0.1).
5. success: the checkpoint path is published on ``~/checkpoint`` (``std_msgs/String``, transient-local); the query
   node loads it beside the served field and swaps it in (queries in flight finish on the old one).

Goals are served only in the lifecycle state ``active``; ``autostart`` (default true) configures and activates
at start. ``/diagnostics`` at 1 Hz.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import traceback
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
from f3rm_ros.core.training import TrainerConfig
from f3rm_ros.core.workflows.refresh import RefreshConfig
from f3rm_ros.core.workflows.runs import RunState, dataset_runs, resumable_run, run_state
from f3rm_ros.core.workflows.train_job import TrainJob
from f3rm_ros.core.workflows.train_scene import TrainBudget, TrainSceneRequest, latest_dataset
from f3rm_ros.ros.common import (OK, WARN, AliveBeacon, DiagnosticsPublisher, PathRefused, Refused, expand_root,
                                 resolve_under_root, run_node)
from f3rm_ros.ros.params import ParamBinding

__all__ = ["TrainNodeSettings", "TrainBudget", "TrainNode", "FEATURE_TYPES", "latest_dataset", "main"]

FEATURE_TYPES = ("clip", "dino", "labels", "none")


@dataclasses.dataclass
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
    refresh_steps: int = param(800, "fine-tuning steps of a refresh goal (refresh_from) whose num_steps is 0 (800: "
                                    "what the H100 scene-edit bench measured, ~3.5 s; 400 on a 2-core CPU, ~55 s)",
                               range=(1, 10_000_000))
    autostart: bool = param(True, "configure and activate at start (no lifecycle manager needed)", read_only=True)


class TrainNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("train_node", namespace=kwargs.pop("namespace", "/f3rm"), **kwargs)
        # the properties below read each section's current config; a goal takes them when it starts
        self.params = {"": ParamBinding(self, TrainNodeSettings),
                       # progress every step (the default 10 would make feedback lag by up to 10 steps on a CPU)
                       "trainer": ParamBinding(self, TrainerConfig, "trainer", overrides={"progress_every": 1}),
                       "budget": ParamBinding(self, TrainBudget, "trainer"),  # trainer.num_steps
                       "features": ParamBinding(self, FeaturesConfig, "features"),
                       "refresh": ParamBinding(self, RefreshConfig, "refresh")}

        self.state = "unconfigured"
        self._lock = threading.Lock()
        self._run: TrainJob | None = None
        self._last_checkpoint = self._last_outcome = ""
        self.checkpoint_pub = None
        self._group = ReentrantCallbackGroup()
        self._action = ActionServer(self, TrainFields, "~/train", execute_callback=self._execute,
                                    goal_callback=lambda _goal: GoalResponse.ACCEPT,
                                    cancel_callback=lambda _goal: CancelResponse.ACCEPT, callback_group=self._group)
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostic_status, callback_group=self._group)
        self.alive = AliveBeacon(self)  # ~/alive: clients notice at once when this process dies
        if self.settings.autostart:
            self.trigger_configure()
            if self.state == "inactive":
                self.trigger_activate()
        self.alive.set(self.state)
        self.get_logger().info(f"train_node {self.state}: action {self.resolve_topic_name('~/train')}, data root "
                               f"{self.settings.data_root}, checkpoints {self.settings.checkpoint_root}")

    # ----------------------------------------------------------------------------- parameters
    settings: TrainNodeSettings = property(lambda self: self.params[""].config)  # type: ignore[assignment]
    trainer_config: TrainerConfig = property(lambda self: self.params["trainer"].config)  # type: ignore[assignment]
    budget: TrainBudget = property(lambda self: self.params["budget"].config)  # type: ignore[assignment]
    features_config: FeaturesConfig = property(lambda self: self.params["features"].config)  # type: ignore[assignment]
    refresh_config: RefreshConfig = property(lambda self: self.params["refresh"].config)  # type: ignore[assignment]

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
        if hasattr(self, "alive"):
            self.alive.set("active")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_run(wait=False)
        self.state = "inactive"
        self.alive.set("inactive")
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
        if (job := self._run) is not None:
            job.stop()
            if wait:
                job.join(timeout=60.0)

    # ------------------------------------------------------------------------------- the goal
    def _job(self, req: Any, gid: str) -> TrainJob:
        """The training job of a goal (not started), or :class:`Refused` with the reason."""
        s = self.settings
        if self.state != "active":
            raise Refused(f"train_node is {self.state}, not active; activate it (lifecycle) first")
        if (busy := self._run) is not None:
            raise Refused(f"rejected: another training goal ({busy.name}) is running ({busy.where}); one goal at a "
                          "time: cancel it or wait for its result")
        try:
            if req.dataset_path.strip():
                path = resolve_under_root(req.dataset_path, s.data_root, what="dataset path", must_exist=True)
                if path.is_file() and path.name == "transforms.json":
                    path = path.parent
            elif (path := latest_dataset(s.data_root)) is None:
                raise Refused(f"dataset_path is empty and there is no dataset (transforms.json) under the data root "
                              f"{expand_root(s.data_root)} yet; capture one first")
            if not (path / "transforms.json").is_file():
                raise Refused(f"dataset path {str(path)!r} holds no transforms.json")
            runs_dir = expand_root(s.checkpoint_root) / path.name
            if str(getattr(req, "refresh_from", "")).strip() or str(getattr(req, "edits_path", "")).strip():
                return self._refresh_job(req, gid, path)
            resumed = self._resumed_run(str(getattr(req, "resume", "")).strip(), runs_dir, path)
            ftype = (req.feature_type or (resumed.feature_type if resumed else "")
                     or self.features_config.extractor).strip().lower()
            if ftype not in FEATURE_TYPES:
                raise Refused(f"feature_type {req.feature_type or ftype!r} is not one of {list(FEATURE_TYPES)}")
            if resumed is not None and resumed.feature_type and ftype != resumed.feature_type:
                raise Refused(f"feature_type {ftype!r} differs from the resumed run's {resumed.feature_type!r}")
            steps = int(req.num_steps) or (resumed.num_steps if resumed else 0) or int(self.budget.num_steps)
            if resumed is not None:
                if steps <= resumed.step:
                    raise Refused(f"run {resumed.describe()} is already at step {resumed.step}; num_steps {steps} "
                                  "asks for no more")
                run_dir, note = resumed.run_dir, ("", 0)
            else:
                run_dir = resolve_under_root(Path(path.name) / f"{time.strftime('%Y%m%d-%H%M%S')}-{ftype}-{gid}",
                                             s.checkpoint_root, what="run folder")
                note = self._shadow_note(runs_dir)
        except PathRefused as e:
            raise Refused(str(e)) from None
        features = "none" if ftype == "none" else dataclasses.replace(self.features_config, extractor=ftype)
        what = (f"resuming {resumed.describe()} from {resumed.checkpoint.name}" if resumed is not None
                else "training")
        job = TrainJob(TrainSceneRequest(
            path, num_steps=steps, trainer=self.trainer_config, features=features,
            feature_cache=expand_root(s.checkpoint_root) / "feature_cache" if s.cache_features else None,
            downscale=s.dataset_downscale, eval_every_frame=s.dataset_eval_every, device=s.device,
            torch_threads=s.torch_threads, run_dir=run_dir,
            resume=str(resumed.checkpoint) if resumed is not None else None,
            command=f"goal {gid}: {what} on {path} with {ftype} features to step {steps}"), name=gid)
        job.note = note  # (text, the step this run must pass for it to no longer apply)
        return job

    def _refresh_job(self, req: Any, gid: str, dataset: Path) -> TrainJob:
        """The job of a refresh goal (``refresh_from``), or :class:`Refused` with the reason."""
        from f3rm_ros.core.checkpoint import load_checkpoint
        from f3rm_ros.core.workflows.refresh import boxes_points, refresh_scene

        s = self.settings
        if str(getattr(req, "resume", "")).strip():
            raise Refused("a goal is a refresh (refresh_from) or a resume, not both")
        saved = None
        if str(getattr(req, "edits_path", "")).strip():  # the query node's edit stack, read now (it changes later)
            from f3rm_ros.core.edit_store import EditStoreError, load_edit_stack

            stack = resolve_under_root(req.edits_path, s.checkpoint_root, what="edits_path", must_exist=True)
            try:
                saved = load_edit_stack(stack)
            except EditStoreError as e:
                raise Refused(f"refresh refused: {e}") from None
        if req.refresh_from.strip() or saved is None:
            src = resolve_under_root(req.refresh_from, s.checkpoint_root, what="refresh_from", must_exist=True)
        else:  # the field the edits were made on
            src = resolve_under_root(str(saved.checkpoint), s.checkpoint_root, what="the edits' field",
                                     must_exist=True)
        if not src.is_file():
            raise Refused(f"refresh_from {req.refresh_from!r} is not a checkpoint file")
        if saved is not None and saved.checkpoint.resolve() != src.resolve():
            raise Refused(f"refresh refused: the edits in {req.edits_path} were made on {saved.checkpoint}, not on "
                          f"refresh_from {src}")
        boxes = [float(v) for v in req.changed_boxes]
        try:
            boxes_points(boxes)
            info = load_checkpoint(src).get("extractor_info") or {}
        except ValueError as e:  # CheckpointError is a ValueError
            raise Refused(f"refresh refused: {e}") from None
        ftype = (req.feature_type or str(info.get("type", "")) or self.features_config.extractor).strip().lower()
        if ftype not in FEATURE_TYPES:
            raise Refused(f"feature_type {ftype!r} is not one of {list(FEATURE_TYPES)}")
        steps = int(req.num_steps) or int(s.refresh_steps)
        run_dir = resolve_under_root(Path(dataset.name) / f"{time.strftime('%Y%m%d-%H%M%S')}-refresh-{gid}",
                                     s.checkpoint_root, what="run folder")
        features = "none" if ftype == "none" else dataclasses.replace(self.features_config, extractor=ftype)
        if saved is not None:
            from f3rm_ros.core.workflows.edit_refresh import refresh_with_edits

            runner = functools.partial(refresh_with_edits, refresh_from=src, edits=saved.edits, changed_boxes=boxes,
                                       edits_path=saved.path, config=self.refresh_config)
            what = f"{len(saved.edits)} edits of {saved.path}, {len(boxes) // 6} changed boxes"
        else:
            runner = functools.partial(refresh_scene, refresh_from=src, changed_boxes=boxes, config=self.refresh_config)
            what = f"{len(boxes) // 6} changed boxes"
        job = TrainJob(TrainSceneRequest(
            dataset, num_steps=steps, trainer=self.trainer_config, features=features,
            feature_cache=None, downscale=s.dataset_downscale, device=s.device, torch_threads=s.torch_threads,
            run_dir=run_dir, command=f"goal {gid}: refreshing {src} on {dataset} ({what}) for {steps} steps"),
            name=gid, runner=runner)
        job.note = ("", 0)
        return job

    def _resumed_run(self, resume: str, runs_dir: Path, dataset: Path) -> RunState | None:
        """The run a goal's ``resume`` names (None for a new run), or :class:`Refused` with the reason."""
        if not resume:
            return None
        if resume == "latest":
            found = resumable_run(runs_dir)
            if found is None:
                raise Refused(f"resume 'latest': no interrupted or cancelled run of {dataset.name} with a checkpoint "
                              f"under {runs_dir}; send resume '' for a new run")
            return found
        p = resolve_under_root(resume, self.settings.checkpoint_root, what="resume path", must_exist=True)
        run_dir = p if p.is_dir() else p.parent.parent if p.parent.name == "checkpoints" else p.parent
        found = run_state(run_dir)
        if p.is_file():
            found.checkpoint, found.step = p, _step_of(p)
        if found.checkpoint is None:
            raise Refused(f"resume {resume!r}: no resumable checkpoint (checkpoints/step-*.ckpt) in {run_dir}")
        return found

    @staticmethod
    def _shadow_note(runs_dir: Path) -> tuple[str, int]:
        """What a new run hides (its checkpoints become the newest files while behind another run), and the step of
        that run; ("", 0) if nothing."""
        others = [r for r in dataset_runs(runs_dir) if r.checkpoint is not None]
        if not others:
            return "", 0
        best = max(others, key=lambda r: r.step)
        latest = resumable_run(runs_dir)
        hint = " (to continue it instead: resume 'latest')" if latest and latest.run_dir == best.run_dir else ""
        return (f"run {best.describe()} is further along; until this run passes step {best.step}, its checkpoints "
                f"are the newest under the checkpoint root, which load_field('') picks{hint}"), best.step

    def _execute(self, goal_handle: Any) -> TrainFields.Result:
        gid = bytes(goal_handle.goal_id.uuid).hex()[:8]
        with self._lock:
            try:
                job = self._run = self._job(goal_handle.request, gid)
            except Exception as e:  # a refusal, or a bug: the node keeps serving either way
                job, reason = None, str(e) if isinstance(e, Refused) else f"internal error: {type(e).__name__}: {e}"
        if job is None:
            self.get_logger().warning(f"goal {gid} refused: {reason}")
            goal_handle.abort()
            return TrainFields.Result(success=False, message=reason)
        self.get_logger().info(job.request.command)
        if job.note[0]:
            self.get_logger().warning(f"goal {gid}: note: {job.note[0]}")
        try:
            job.start()
            period = 1.0 / self.settings.feedback_rate_hz

            def send_feedback() -> None:
                try:
                    goal_handle.publish_feedback(self._feedback(job))
                except Exception as e:  # feedback is best effort
                    self.get_logger().warning(f"feedback not sent: {e}", throttle_duration_sec=10.0)

            while not job.join(timeout=period):
                if goal_handle.is_cancel_requested or not goal_handle.is_active:  # not active: shutting down
                    job.stop()
                if goal_handle.is_active:
                    send_feedback()
            if goal_handle.is_active and job.progress is not None:  # the last progress, also of a job shorter than
                send_feedback()  # one feedback period (a few steps on a fast machine)
            return self._finish(goal_handle, job)
        except Exception as e:  # a bug must not take the node down: end the goal with the reason
            self.get_logger().error(f"goal failed unexpectedly: {traceback.format_exc()}")
            if goal_handle.is_active:
                goal_handle.abort()
            return TrainFields.Result(success=False, message=f"internal error: {type(e).__name__}: {e}")
        finally:
            job.stop()
            job.join(timeout=60.0)
            with self._lock:
                self._run = None

    def _feedback(self, job: TrainJob) -> TrainFields.Feedback:
        fb = TrainFields.Feedback(total_steps=job.request.num_steps, elapsed=time.monotonic() - job.t0)
        if (p := job.progress) is not None:
            fb.step, fb.loss = int(p.step), float(p.losses.get("total", sum(p.losses.values())))
            names = [k for k in p.losses if k != "total"]
            fb.loss_names, fb.loss_values = names, [float(p.losses[k]) for k in names]
            fb.psnr, fb.eta = float(p.psnr), float(p.eta_s)
        return fb

    def _finish(self, goal_handle: Any, job: TrainJob) -> TrainFields.Result:
        kind, message = job.outcome()
        res, p = job.result, job.progress
        ev = res.eval if res is not None else {}
        psnr, fmse = ev.get("psnr"), ev.get("feature_mse")
        result = TrainFields.Result(success=kind == "done", message=message, training_time=time.monotonic() - job.t0,
                                    steps_done=int(res.step if res else p.step if p else 0),
                                    checkpoint_path=str(res.checkpoint or "") if res else "",
                                    final_psnr=float(psnr) if psnr is not None and psnr == psnr else 0.0,
                                    final_feature_mse=float(fmse) if fmse is not None else 0.0)
        self._last_outcome = f"failed: {message[:200]}" if kind == "failed" else message
        if kind == "done":
            self._last_checkpoint = result.checkpoint_path
            if self.checkpoint_pub is not None and result.checkpoint_path:
                self.checkpoint_pub.publish(String(data=result.checkpoint_path))
            message += f"; checkpoint {result.checkpoint_path}"
        note, behind = getattr(job, "note", ("", 0))
        if note and result.steps_done < behind:  # still behind the other run: say what load_field('') now picks
            result.message += f"; note: {note}"
            message += f"; note: {note}"
        if kind == "failed":  # rclpy wants one severity per call site
            self.get_logger().error(f"goal {job.name}: {message}")
        else:
            self.get_logger().info(f"goal {job.name}: {message}")
        cancelled = kind == "cancelled" and goal_handle.is_cancel_requested
        if goal_handle.is_active:
            (goal_handle.succeed if kind == "done" else goal_handle.canceled if cancelled else goal_handle.abort)()
        return result

    # ---------------------------------------------------------------------------- diagnostics
    def _diagnostic_status(self) -> tuple[int, str, dict]:
        job = self._run
        values: dict[str, Any] = {"state": self.state, "last_checkpoint": self._last_checkpoint,
                                  "last_outcome": self._last_outcome}
        if job is not None:
            values.update({"goal": job.name, "phase": job.phase})
            if (p := job.progress) is not None:
                values.update({"step": p.step, "total_steps": p.total_steps, "psnr": p.psnr, "eta_s": p.eta_s})
            return OK, f"training ({job.phase})", values
        if self.state != "active":
            return WARN, f"lifecycle state {self.state}", values
        if self._last_outcome.startswith("failed"):
            return WARN, "idle; last goal failed", values
        return OK, "idle", values


def _step_of(checkpoint: Path) -> int:
    digits = "".join(c for c in checkpoint.stem.split("-")[-1] if c.isdigit())
    return int(digits) if digits else 0


def main(args: list[str] | None = None) -> int:
    """``ros2 run f3rm_ros train_node`` / ``scripts/nodes/train_node``."""
    return run_node(TrainNode, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
