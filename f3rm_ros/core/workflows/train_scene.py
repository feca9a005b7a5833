"""Train a scene: dataset -> 2D features -> :class:`~f3rm_ros.core.training.Trainer` -> evaluation -> run folder.

The one training workflow of the project: ``f3rm-train`` (:mod:`f3rm_ros.cli.train`), the ``TrainFields``
action of :mod:`f3rm_ros.ros.train_node` and the training benchmarks call it. No ROS, no open3d: it runs
on a GPU machine that has neither. :class:`~f3rm_ros.core.workflows.train_job.TrainJob` runs it in a thread.

    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest, train_scene

    res = train_scene(TrainSceneRequest("data/mug", num_steps=2000, features="labels",
                                        trainer=trainer_config("small+synthetic"), run_dir="runs/mug"))
    res.field            # runs/mug/field.ckpt, for load_trained_field
    res.eval["psnr"]     # held-out PSNR (dB)

The stages are functions of their own, for callers that time or repeat one of them (the benchmarks):
:func:`load_scene` (the dataset), :func:`scene_features` (feature maps and their :func:`extractor_info`),
:func:`build_trainer` (a fresh or resumed trainer); :func:`train_scene` runs them in order, trains with
progress and cancellation, evaluates and writes the run folder.

Run folder (``TrainSceneRequest.run_dir``; None = write nothing; every file is written atomically)::

    RUN_DIR/config.yaml                         the full TrainerConfig used (after overrides / the resumed one)
    RUN_DIR/run.json                            what was run (see below); "result" is added when training ends
    RUN_DIR/metrics.json                        evaluation history (held-out PSNR, feature MSE, depth error, losses)
    RUN_DIR/checkpoints/step-XXXXXXX.ckpt       resumable (field + optimiser state); the newest
                                                ``keep_checkpoints`` are kept
    RUN_DIR/field.ckpt                          the final field only (load_trained_field; smaller, not resumable)
    RUN_DIR/eval/step-XXXXXXX-frame-XXXX.png    ground truth | render | depth, at each evaluation

``run.json``: ``format`` ("f3rm_ros.run"), ``version`` (1), ``data_dir`` (absolute), ``downscale``,
``eval_every_frame``, ``num_frames``, ``num_train_frames``, ``num_eval_frames``, ``device``, ``num_steps`` (the
step count to reach), ``features`` (the extractor info, below), ``hashgrid_backends``, ``command`` (who asked:
a command line, a goal), ``resumed_from`` (checkpoint path or null), ``started`` (UTC, ISO 8601) and, at the end,
``result``: ``step``, ``stopped`` (cancelled before ``num_steps``), ``elapsed_s`` (the training call, final
evaluation included), ``train_s`` (training steps only), ``field``, ``checkpoint`` (the newest resumable one),
``eval_psnr``, ``eval_feature_mse``, ``eval_depth_median_error_m`` (null when not measured) and, on CUDA,
``peak_gpu_memory_gb``.

Extractor info (one shape, stored in every checkpoint as ``extractor_info`` and in ``run.json`` as
``features``): ``{"name", "type", "feature_dim", "settings", ...}`` where the rest is the extractor's
``cache_key()`` (``version``, ``resolved``, ``label_table``: what rebuilds its text encoder with
``create_extractor(info)``). Without features: ``type`` and ``name`` "none", ``feature_dim`` 0; the smooth
stand-in of :func:`~f3rm_ros.core.feature_targets.synthetic_feature_maps`: ``type`` "synthetic".

The step budget has one home: :attr:`TrainSceneRequest.num_steps`, default :data:`DEFAULT_NUM_STEPS`
(``f3rm-train --steps`` and the train node's ``trainer.num_steps`` parameter / the goal's ``num_steps`` map
onto it). It is a total: a resumed run continues to it.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from f3rm_ros.core.config import ConfigError, from_dict, param, replace, save_yaml, to_dict
from f3rm_ros.core.dataset import load_dataset
from f3rm_ros.core.device import resolve_device
from f3rm_ros.core.io import atomic_write_json
from f3rm_ros.core.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from f3rm_ros.core.training import ProgressInfo, Trainer, TrainerConfig

__all__ = ["DEFAULT_NUM_STEPS", "RUN_FORMAT", "TrainBudget", "FeatureMaps", "TrainSceneRequest", "TrainSceneResult",
           "extractor_info", "make_extractor_info", "load_scene", "scene_features", "resolve_resume",
           "resolve_config", "build_trainer", "train_scene", "latest_dataset"]

log = logging.getLogger(__name__)

DEFAULT_NUM_STEPS = 30000  # F3RM's budget (nerfstudio's nerfacto default)
RUN_FORMAT = "f3rm_ros.run"
RUN_VERSION = 1


@dataclass
class TrainBudget:
    """The step budget as a setting: the train node's ``trainer.num_steps`` parameter (a goal's ``num_steps`` 0
    takes it); ``f3rm-train --steps`` and :attr:`TrainSceneRequest.num_steps` default to the same value."""

    num_steps: int = param(DEFAULT_NUM_STEPS, "training steps when a goal gives num_steps 0", range=(1, 100_000_000))


# ------------------------------------------------------------------------------ extractor info
def make_extractor_info(type: str, feature_dim: int, settings: Mapping[str, Any] | None = None,  # noqa: A002
                        name: str | None = None, **extra: Any) -> dict[str, Any]:
    """The one ``extractor_info`` shape (see the module docstring)."""
    return {"name": name or type, "type": type, "feature_dim": int(feature_dim), "settings": dict(settings or {}),
            **extra}


def extractor_info(extractor: Any) -> dict[str, Any]:
    """The info of a :class:`~f3rm_ros.core.features.FeatureExtractor`: its ``cache_key()`` plus name and width."""
    key = dict(extractor.cache_key())
    kind = key.pop("type", extractor.name)
    return make_extractor_info(kind, int(extractor.feature_dim), key.pop("settings", {}), name=extractor.name, **key)


NO_FEATURES = make_extractor_info("none", 0)


@dataclass
class FeatureMaps:
    """Feature maps made elsewhere (the benchmarks' random targets): ``[N_frames, h, w, D]`` and their info."""

    maps: Tensor | None  # [N, h, w, D] in the dataset's frame order, or None (RGB only)
    info: dict[str, Any] = dc_field(default_factory=dict)
    seconds: float = 0.0  # time it took to make them (0 = not measured)

    def __post_init__(self) -> None:  # complete the info to the one shape
        d = int(self.maps.shape[-1]) if self.maps is not None else 0
        info = dict(self.info)
        kind = str(info.pop("type", info.get("name", "none" if self.maps is None else "custom")))
        name = info.pop("name", kind)
        info.pop("feature_dim", None)
        self.info = make_extractor_info(kind, d, info.pop("settings", {}), name=name, **info)


# ------------------------------------------------------------------------------ request / result
@dataclass
class TrainSceneRequest:
    """What to train, how long, and where to write it.

    Attributes:
        dataset: a dataset folder (or its ``transforms.json``), or a loaded ``PosedImageDataset``.
        num_steps: the step count to reach (the one step budget; a resumed run continues to it).
        trainer: the :class:`TrainerConfig` of a fresh run.
        overrides: flat dotted ``TrainerConfig`` keys applied on top of ``trainer``, or on top of the checkpoint's
            config when resuming (``model.*`` keys cannot change on resume).
        features: the feature targets: None / ``"none"`` (RGB only), ``"synthetic"`` (smooth stand-in of
            ``synthetic_dim`` channels, no model), an extractor name (``"clip"``, ``"dino"``, ``"labels"``), a
            ``FeaturesConfig`` or mapping for ``create_extractor``, a ``FeatureExtractor``, or :class:`FeatureMaps`.
        feature_cache: folder of the feature cache (None = no cache).
        synthetic_dim: channels of ``features="synthetic"``.
        downscale, eval_every_frame: how the dataset is read (``load_dataset``) when ``dataset`` is a path.
        device: torch device name (``auto``: CUDA when there is one).
        torch_threads: CPU threads for torch (``torch.set_num_threads``, process-wide; 0 = leave as is).
        run_dir: the run folder (module docstring); None = write nothing (benchmarks).
        resume: a checkpoint file, a run folder (its newest step checkpoint), ``"latest"`` (the newest in
            ``run_dir``), or None for a fresh run.
        command: who asked (a command line, a goal), recorded in ``run.json``.
        keep_trainer: return the trainer in the result (callers that render or save more); else it is dropped.
        extraction_progress: show the feature extraction's progress bar.
        on_progress: called with the trainer's ``ProgressInfo`` every ``progress_every`` steps and at the end.
        should_stop: polled between stages and every step; True ends the run (a checkpoint is still written
            when training had started).
        on_phase: told the stage: "loading dataset", "extracting <type> features", "training", "done".
        log: human-readable lines (dataset summary, resume); default: this module's logger.
    """

    dataset: Any
    num_steps: int = DEFAULT_NUM_STEPS
    trainer: TrainerConfig = dc_field(default_factory=TrainerConfig)
    overrides: Mapping[str, Any] = dc_field(default_factory=dict)
    features: Any = None
    feature_cache: str | Path | None = None
    synthetic_dim: int = 16
    downscale: int = 1
    eval_every_frame: int = 8
    device: str | torch.device = "auto"
    torch_threads: int = 0
    run_dir: str | Path | None = None
    resume: str | Path | None = None
    command: str = ""
    keep_trainer: bool = False
    extraction_progress: bool = False
    on_progress: Callable[[ProgressInfo], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_phase: Callable[[str], None] | None = None
    log: Callable[[str], None] | None = None


@dataclass
class TrainSceneResult:
    """What :func:`train_scene` returns.

    ``started`` is False when the run was stopped before training began (nothing written, ``step`` 0).
    """

    step: int
    stopped: bool
    started: bool
    elapsed_s: float  # Trainer.train, final evaluation and checkpoint included
    train_s: float  # training steps only (the last progress report's elapsed time)
    features_s: float  # feature extraction (or cache read)
    losses: dict[str, float] = dc_field(default_factory=dict)
    eval: dict[str, Any] = dc_field(default_factory=dict)
    checkpoint: Path | None = None  # the newest resumable checkpoint
    field: Path | None = None  # RUN_DIR/field.ckpt
    run_dir: Path | None = None
    extractor_info: dict[str, Any] = dc_field(default_factory=dict)
    resumed_from: Path | None = None
    last_progress: ProgressInfo | None = None
    trainer: Trainer | None = None  # only with keep_trainer


# ------------------------------------------------------------------------------ stages
def latest_dataset(data_root: str | Path, max_depth: int = 3) -> Path | None:
    """The dataset folder under ``data_root`` (``~`` and variables expanded) whose ``transforms.json`` was modified
    last, None if there is none. Candidates whose resolved path leaves the root (symlinks) are ignored."""
    root = Path(os.path.expandvars(os.path.expanduser(str(data_root)))).resolve()
    best: tuple[float, Path] | None = None
    for depth in range(max_depth + 1):
        for js in root.glob("/".join(["*"] * depth + ["transforms.json"])):
            try:
                real = js.resolve(strict=True)
                m = real.stat().st_mtime
            except OSError:
                continue
            if real.is_relative_to(root) and (best is None or m > best[0]):
                best = (m, real.parent)
    return None if best is None else best[1]


def load_scene(dataset: Any, downscale: int = 1, eval_every_frame: int = 8) -> Any:
    """The dataset: a loaded one is returned as is, a path is read with ``load_dataset``."""
    if isinstance(dataset, (str, Path)):
        return load_dataset(dataset, downscale=downscale, eval_every=eval_every_frame)
    return dataset


def scene_features(source: Any, dataset: Any, cache_dir: str | Path | None = None, synthetic_dim: int = 16,
                   progress: bool = False) -> FeatureMaps:
    """Feature maps of every frame of ``dataset`` and their extractor info (``source``: see
    :attr:`TrainSceneRequest.features`), with the seconds it took.

    Raises:
        ValueError / ConfigError: an unknown extractor or setting, label features on a dataset without labels.
        WeightsUnavailableError: the extractor's weights cannot be loaded.
    """
    if isinstance(source, FeatureMaps):
        return source
    if source is None or source == "none":
        return FeatureMaps(None, NO_FEATURES)
    t0 = time.perf_counter()
    if source == "synthetic":
        from f3rm_ros.core.feature_targets import SYNTHETIC_EXTRACTOR_INFO, synthetic_feature_maps  # noqa: PLC0415

        maps = synthetic_feature_maps([dataset.get_image(i) for i in range(len(dataset))], dim=synthetic_dim)
        info = make_extractor_info("synthetic", synthetic_dim, SYNTHETIC_EXTRACTOR_INFO["settings"])
        return FeatureMaps(maps, info, time.perf_counter() - t0)
    from f3rm_ros.core import features as F  # noqa: PLC0415 - model code only when features are asked for

    if isinstance(source, F.FeatureExtractor):
        extractor = source
    else:
        if isinstance(source, str):
            source = from_dict(F.FeaturesConfig, {"extractor": source}, where="features")
        extractor = F.create_extractor_for_dataset(source, dataset)
    maps = F.extract_dataset_features(extractor, dataset, cache_dir, progress=progress)
    return FeatureMaps(maps, extractor_info(extractor), time.perf_counter() - t0)


def resolve_resume(resume: str | Path | None, run_dir: str | Path | None) -> Path | None:
    """The checkpoint file a ``resume`` value names (see :attr:`TrainSceneRequest.resume`).

    Raises:
        CheckpointError: no checkpoint there.
    """
    if resume is None:
        return None
    if str(resume) == "latest":
        if run_dir is None:
            raise CheckpointError("resume 'latest' needs a run folder")
        path = latest_checkpoint(run_dir)
        where = Path(run_dir) / "checkpoints"
    else:
        path = where = Path(resume)
        if path.is_dir():
            path = latest_checkpoint(path)
    if path is None:
        raise CheckpointError(f"resume: no checkpoint found in {where}")
    return path


def resolve_config(trainer: TrainerConfig, overrides: Mapping[str, Any] | None = None,
                   resume: Path | None = None) -> TrainerConfig:
    """The config of a run: ``trainer`` with ``overrides`` (flat dotted keys), or, when resuming, the checkpoint's
    config with ``overrides`` (``model.*`` keys refused: the networks of a checkpoint are fixed).

    Raises:
        ConfigError: an unknown key or bad value; CheckpointError: a model key on resume, an unreadable checkpoint.
    """
    overrides = dict(overrides or {})
    if resume is None:
        return replace(trainer, **overrides) if overrides else trainer
    if any(k.replace("__", ".").startswith("model.") for k in overrides):
        raise CheckpointError("model settings cannot be changed when resuming")
    cfg = from_dict(TrainerConfig, load_checkpoint(resume)["config"])
    return replace(cfg, **overrides) if overrides else cfg


def build_trainer(config: TrainerConfig, dataset: Any, features: FeatureMaps, device: str | torch.device = "cpu",
                  run_dir: str | Path | None = None, resume: Path | None = None) -> Trainer:
    """A fresh trainer, or one resumed from the checkpoint ``resume`` with the non-model settings of ``config``
    (see :func:`resolve_config`).

    Raises:
        CheckpointError: the checkpoint does not fit this dataset / feature setup.
    """
    if resume is None:
        return Trainer(config, dataset, features.maps, device, run_dir=run_dir, extractor_info=features.info)
    return Trainer.from_checkpoint(resume, dataset, features.maps, device, run_dir=run_dir,
                                   config_overrides={k: v for k, v in to_dict(config).items() if k != "model"})


# ------------------------------------------------------------------------------ the workflow
def train_scene(request: TrainSceneRequest) -> TrainSceneResult:
    """Load, extract, build, train (progress, cancellation), evaluate and write the run folder.

    Raises:
        DatasetError, ConfigError, CheckpointError, ValueError, RuntimeError (e.g. missing weights): the run
        cannot start; nothing is trained. Errors during training propagate after the trainer's own handling.
    """
    req = request
    say = req.log or log.info
    phase = req.on_phase or (lambda _p: None)
    stop = req.should_stop or (lambda: False)
    if req.num_steps < 0:
        raise ConfigError(f"num_steps must be >= 0, got {req.num_steps}")
    device = resolve_device(req.device) if isinstance(req.device, str) else torch.device(req.device)
    if req.torch_threads:
        torch.set_num_threads(req.torch_threads)
    run_dir = Path(req.run_dir) if req.run_dir is not None else None
    resume = resolve_resume(req.resume, run_dir)
    config = resolve_config(req.trainer, req.overrides, resume)  # bad settings fail before any work

    phase("loading dataset")
    ds = load_scene(req.dataset, req.downscale, req.eval_every_frame)
    K0 = ds.intrinsics[0]
    say(f"dataset {ds.root}: {len(ds)} frames ({len(ds.train_indices)} train, {len(ds.eval_indices)} eval), "
        f"{K0.width}x{K0.height} after downscale {ds.downscale}; device {device}")
    kind = _source_kind(req.features)
    if kind not in ("none", "given"):
        phase(f"extracting {kind} features")
    feats = scene_features(req.features, ds, req.feature_cache, req.synthetic_dim, req.extraction_progress)
    if feats.maps is not None:
        say(f"feature maps {tuple(feats.maps.shape)} from {feats.info['name']} ({feats.seconds:.1f} s)")
    if stop():
        return TrainSceneResult(step=0, stopped=True, started=False, elapsed_s=0.0, train_s=0.0,
                                features_s=feats.seconds, extractor_info=feats.info)

    phase("training")
    trainer = build_trainer(config, ds, feats, device, run_dir, resume)
    if resume is not None:
        say(f"resumed from {resume} at step {trainer.step}")
    run_info: dict[str, Any] = {}
    if run_dir is not None:
        save_yaml(trainer.config, run_dir / "config.yaml")
        run_info = {"format": RUN_FORMAT, "version": RUN_VERSION, "data_dir": str(Path(ds.root).resolve()),
                    "downscale": int(ds.downscale), "eval_every_frame": req.eval_every_frame,
                    "num_frames": len(ds), "num_train_frames": len(ds.train_indices),
                    "num_eval_frames": len(ds.eval_indices), "device": str(device), "num_steps": int(req.num_steps),
                    "features": trainer.extractor_info, "hashgrid_backends": trainer.model.hashgrid_backends(),
                    "command": req.command, "resumed_from": str(resume) if resume else None,
                    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        atomic_write_json(run_dir / "run.json", run_info)

    last: list[ProgressInfo] = []

    def on_progress(p: ProgressInfo) -> None:
        last[:] = [p]
        if req.on_progress is not None:
            req.on_progress(p)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res = trainer.train(req.num_steps, on_progress=on_progress, should_stop=stop)
    out = TrainSceneResult(step=res.step, stopped=res.stopped, started=True, elapsed_s=res.elapsed_s,
                           train_s=last[0].elapsed_s if last else 0.0, features_s=feats.seconds,
                           losses=dict(res.losses), eval=dict(res.eval), checkpoint=res.checkpoint, run_dir=run_dir,
                           extractor_info=dict(trainer.extractor_info), resumed_from=resume,
                           last_progress=last[0] if last else None)
    if run_dir is not None:
        out.field = trainer.save_checkpoint(run_dir / "field.ckpt", include_optimizer=False)
        ev = res.eval
        run_info["result"] = {"step": res.step, "stopped": res.stopped, "elapsed_s": res.elapsed_s,
                              "train_s": out.train_s, "field": str(out.field),
                              "checkpoint": str(res.checkpoint) if res.checkpoint else None,
                              "eval_psnr": ev.get("psnr"), "eval_feature_mse": ev.get("feature_mse"),
                              "eval_depth_median_error_m": ev.get("depth_median_error_m")}
        if device.type == "cuda":
            run_info["result"]["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        atomic_write_json(run_dir / "run.json", run_info)
    if req.keep_trainer:
        out.trainer = trainer
    phase("done")
    return out


def _source_kind(source: Any) -> str:
    """A short name of a feature source, for the phase ("extracting clip features")."""
    if source is None or isinstance(source, str):
        return source or "none"
    if isinstance(source, FeatureMaps):
        return "none" if source.maps is None else "given"
    if isinstance(source, Mapping):
        return str(source.get("extractor", source.get("type", "?")))
    if dataclasses.is_dataclass(source) and hasattr(source, "extractor"):
        return str(source.extractor)
    return str(getattr(source, "name", type(source).__name__))
