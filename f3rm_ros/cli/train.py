"""``f3rm-train DATA_DIR``: train the radiance + feature field on a transforms.json dataset.

Writes a run folder (default ``runs/<dataset name>-<time>``)::

    RUN_DIR/config.yaml          the full TrainerConfig used
    RUN_DIR/run.json             dataset, downscale, device, features, command line, final result
    RUN_DIR/metrics.json         evaluation history (held-out PSNR, feature MSE, depth error with depth images, losses)
    RUN_DIR/checkpoints/step-XXXXXXX.ckpt   resumable (field + optimiser state)
    RUN_DIR/field.ckpt           the final field only (for load_trained_field; smaller, not resumable)
    RUN_DIR/eval/step-XXXXXXX-frame-XXXX.png   ground truth | render | depth

Examples::

    f3rm-train /work/shared/data/fox --steps 2000 --downscale 2 --out runs/fox
    f3rm-train /work/shared/data/fox --steps 5000 --resume --out runs/fox        # continue to 5000
    f3rm-train DATA --features synthetic --steps 500                              # no CLIP weights needed
    f3rm-train DATA --features-from clip                                         # 2D extractor (features module)
    f3rm-train DATA --model.rgb.grid.log2_hashmap_size 17 --rays_per_batch 2048  # any config field
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from f3rm_ros.core.config import ConfigError, add_cli_args, apply_cli_args, load_yaml, save_yaml

__all__ = ["main", "build_parser", "ProgressBar"]


def build_parser() -> argparse.ArgumentParser:
    from f3rm_ros.core.trainer import TrainerConfig  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="f3rm-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("::", 1)[-1])
    p.add_argument("data_dir", type=Path, help="dataset folder (or its transforms.json)")
    p.add_argument("--steps", type=int, default=30000, help="total training steps to reach (default 30000)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1 (default auto)")
    p.add_argument("--downscale", type=int, default=1, help="integer image downscale factor (default 1)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<dataset>-<time>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                   help="resume from a checkpoint file, or (no value) from the newest one in --out")
    p.add_argument("--config", type=Path, default=None, help="YAML file with TrainerConfig settings")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="named settings instead of the reference defaults, e.g. small, synthetic, small+synthetic "
                        "(f3rm_ros/core/presets.py); --config and --section.key flags apply on top")
    p.add_argument("--features", choices=("none", "synthetic"), default="none",
                   help="feature targets without an extractor: none (RGB only) or synthetic (smooth stand-in)")
    p.add_argument("--synthetic-dim", type=int, default=16, help="feature dim of --features synthetic")
    p.add_argument("--features-from", default=None, metavar="EXTRACTOR",
                   help="distil features of this 2D extractor (clip, dino, labels) via f3rm_ros.core.features")
    p.add_argument("--features-cache", type=Path, default=None,
                   help="feature cache folder (default DATA_DIR/.f3rm_feature_cache)")
    p.add_argument("--eval-every-frame", type=int, default=8, help="hold out every k-th frame (0 = none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cli_args(p, TrainerConfig)
    return p


def _fmt_time(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressBar:
    """One-line progress bar (step, loss, PSNR, rate, ETA) on a terminal; periodic lines otherwise."""

    def __init__(self, stream=None, width: int = 24, every_s: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, info) -> None:
        frac = info.step / max(1, info.total_steps)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        ev = f" eval {info.eval_psnr:.2f} dB" if info.eval_psnr is not None else ""
        fe = f" feat {info.losses['feature_mse']:.4g}" if "feature_mse" in info.losses else ""
        line = (f"step {info.step}/{info.total_steps} [{bar}] loss {info.losses.get('total', float('nan')):.4g}"
                f"{fe} PSNR {info.psnr:.2f} dB{ev} {info.steps_per_s:.2f} it/s ETA {_fmt_time(info.eta_s)}")
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            if info.step >= info.total_steps:
                self.stream.write("\n")
        elif now - self._last >= self.every_s or info.step >= info.total_steps:
            self.stream.write(line + "\n")
            self._last = now
        self.stream.flush()


def _read_yaml_mapping(path: Path) -> dict:
    import yaml  # noqa: PLC0415

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _flat_mapping(data: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the settings a YAML file states)."""
    out: dict = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat_mapping(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def main(argv: list[str] | None = None) -> int:
    import torch  # noqa: PLC0415

    from f3rm_ros.core.dataset import DatasetError, load_dataset  # noqa: PLC0415
    from f3rm_ros.core.device import resolve_device  # noqa: PLC0415
    from f3rm_ros.core.feature_targets import (SYNTHETIC_EXTRACTOR_INFO, features_from_extractor,  # noqa: PLC0415
                                               synthetic_feature_maps)
    from f3rm_ros.core.io import atomic_write_json  # noqa: PLC0415
    from f3rm_ros.core.trainer import (CheckpointError, Trainer, TrainerConfig, latest_checkpoint,  # noqa: PLC0415
                                       load_checkpoint)

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = resolve_device(args.device)
        if args.preset:  # the preset, then the file's settings on top of it, then the flags
            from f3rm_ros.core.presets import trainer_config  # noqa: PLC0415

            try:
                overrides = _flat_mapping(_read_yaml_mapping(args.config)) if args.config else {}
                cfg = trainer_config(args.preset, **overrides)
            except ValueError as e:
                raise ConfigError(f"--preset {args.preset}: {e}") from None
        else:
            cfg = load_yaml(TrainerConfig, args.config) if args.config else TrainerConfig()
        cfg = apply_cli_args(cfg, args)
        data_dir = args.data_dir
        out = args.out or Path("runs") / f"{data_dir.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
        ckpt_path = None
        if args.resume is not None:
            ckpt_path = latest_checkpoint(out) if args.resume == "latest" else Path(args.resume)
            if ckpt_path is not None and ckpt_path.is_dir():
                ckpt_path = latest_checkpoint(ckpt_path)
            if ckpt_path is None:
                raise CheckpointError(f"--resume: no checkpoint found in {out / 'checkpoints'}")
        ds = load_dataset(data_dir, downscale=args.downscale, eval_every=args.eval_every_frame)
        print(f"dataset {data_dir}: {len(ds)} frames ({len(ds.train_indices)} train, {len(ds.eval_indices)} eval), "
              f"{ds.intrinsics[0].width}x{ds.intrinsics[0].height} after downscale {args.downscale}; device {device}",
              file=sys.stderr)
        feature_maps, info = None, {}
        if args.features_from:
            cache = args.features_cache or (ds.root / ".f3rm_feature_cache")
            feature_maps, info = features_from_extractor(args.features_from, ds, cache)
        elif args.features == "synthetic":
            feature_maps = synthetic_feature_maps([ds.get_image(i) for i in range(len(ds))], dim=args.synthetic_dim)
            info = dict(SYNTHETIC_EXTRACTOR_INFO, feature_dim=args.synthetic_dim)
        if feature_maps is not None:
            print(f"feature maps {tuple(feature_maps.shape)} from {info.get('name')}", file=sys.stderr)
        if ckpt_path is not None:
            ck_cfg = load_checkpoint(ckpt_path)["config"]
            overrides = {k: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
            if any(k.startswith("cfg:model.") for k in overrides):
                raise CheckpointError("model settings cannot be changed when resuming")
            from f3rm_ros.core.config import from_dict, to_dict  # noqa: PLC0415

            cfg = apply_cli_args(from_dict(TrainerConfig, ck_cfg), args)
            trainer = Trainer.from_checkpoint(ckpt_path, ds, feature_maps, device, run_dir=out,
                                              config_overrides={k: v for k, v in to_dict(cfg).items() if k != "model"})
            print(f"resumed from {ckpt_path} at step {trainer.step}", file=sys.stderr)
        else:
            trainer = Trainer(cfg, ds, feature_maps, device, run_dir=out, extractor_info=info)
    except (ConfigError, DatasetError, CheckpointError, RuntimeError, ValueError) as e:
        print(f"f3rm-train: error: {e}", file=sys.stderr)
        return 2

    save_yaml(trainer.config, out / "config.yaml")
    run_info = {"data_dir": str(data_dir.resolve()), "downscale": args.downscale, "device": str(device),
                "features": info, "hashgrid_backends": trainer.model.hashgrid_backends(),
                "command": " ".join(sys.argv if argv is None else ["f3rm-train", *argv]),
                "resumed_from": str(ckpt_path) if ckpt_path else None}
    atomic_write_json(out / "run.json", run_info)

    stop = {"flag": False}

    def on_sigint(signum, frame):  # noqa: ARG001
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print("\nstopping after this step (Ctrl-C again to abort without a checkpoint)", file=sys.stderr)

    old = signal.signal(signal.SIGINT, on_sigint)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        res = trainer.train(args.steps, on_progress=None if args.quiet else ProgressBar(),
                            should_stop=lambda: stop["flag"])
    finally:
        signal.signal(signal.SIGINT, old)
    field_file = trainer.save_checkpoint(out / "field.ckpt", include_optimizer=False)
    run_info["result"] = {"step": res.step, "stopped": res.stopped, "elapsed_s": res.elapsed_s,
                          "field": str(field_file),
                          "eval_psnr": res.eval.get("psnr"), "eval_feature_mse": res.eval.get("feature_mse"),
                          "checkpoint": str(res.checkpoint) if res.checkpoint else None}
    if device.type == "cuda":
        run_info["result"]["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    atomic_write_json(out / "run.json", run_info)
    fm = res.eval.get("feature_mse")
    print(f"{'stopped' if res.stopped else 'done'} at step {res.step} in {res.elapsed_s:.1f}s: held-out PSNR "
          f"{res.eval.get('psnr', float('nan')):.2f} dB" + (f", feature MSE {fm:.5f}" if fm is not None else "")
          + (f", median depth error {1000 * dm:.1f} mm" if (dm := res.eval.get("depth_median_error_m")) is not None
             else "") + f"; run folder {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
