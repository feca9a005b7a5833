"""``f3rm-train DATA_DIR``: train the radiance + feature field on a transforms.json dataset.

Runs :func:`f3rm_ros.core.workflows.train_scene.train_scene` and writes its run folder (default
``runs/<dataset name>-<time>``; the layout and run.json are documented there)::

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

from f3rm_ros.core.config import ConfigError, add_cli_args, load_yaml

__all__ = ["main", "build_parser", "ProgressBar"]


def build_parser() -> argparse.ArgumentParser:
    from f3rm_ros.core.training import TrainerConfig  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import DEFAULT_NUM_STEPS  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="f3rm-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("::", 1)[-1])
    p.add_argument("data_dir", type=Path, help="dataset folder (or its transforms.json)")
    p.add_argument("--steps", type=int, default=DEFAULT_NUM_STEPS,
                   help=f"total training steps to reach (default {DEFAULT_NUM_STEPS})")
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
    import yaml  # noqa: PLC0415

    from f3rm_ros.core.dataset import DatasetError  # noqa: PLC0415
    from f3rm_ros.core.checkpoint import CheckpointError  # noqa: PLC0415
    from f3rm_ros.core.training import TrainerConfig  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest, train_scene  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop = {"flag": False}

    def on_sigint(signum, frame):  # noqa: ARG001
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print("\nstopping after this step (Ctrl-C again to abort without a checkpoint)", file=sys.stderr)

    data_dir = args.data_dir
    out = args.out or Path("runs") / f"{data_dir.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        if args.preset:  # the preset, then the file's settings on top of it, then the flags (overrides)
            from f3rm_ros.core.presets import trainer_config  # noqa: PLC0415

            try:
                cfg = trainer_config(args.preset, **(_flat_mapping(_read_yaml_mapping(args.config))
                                                     if args.config else {}))
            except ValueError as e:
                raise ConfigError(f"--preset {args.preset}: {e}") from None
        else:
            cfg = load_yaml(TrainerConfig, args.config) if args.config else TrainerConfig()
        flags = {k[len("cfg:"):]: yaml.safe_load(v) for k, v in vars(args).items() if k.startswith("cfg:")
                 and v is not None}  # on --resume they apply to the checkpoint's config
        cache = None
        if args.features_from:
            cache = args.features_cache or (data_dir if data_dir.is_dir() else data_dir.parent) / ".f3rm_feature_cache"
        res = train_scene(TrainSceneRequest(
            data_dir, num_steps=args.steps, trainer=cfg, overrides=flags,
            features=args.features_from or args.features, feature_cache=cache, synthetic_dim=args.synthetic_dim,
            downscale=args.downscale, eval_every_frame=args.eval_every_frame, device=args.device, run_dir=out,
            resume=args.resume, command=" ".join(sys.argv if argv is None else ["f3rm-train", *argv]),
            extraction_progress=not args.quiet, on_progress=None if args.quiet else ProgressBar(),
            should_stop=lambda: stop["flag"], log=lambda line: print(line, file=sys.stderr)))
    except (ConfigError, DatasetError, CheckpointError, RuntimeError, ValueError) as e:
        print(f"f3rm-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, old)
    ev = res.eval
    fm, dm = ev.get("feature_mse"), ev.get("depth_median_error_m")
    print(f"{'stopped' if res.stopped else 'done'} at step {res.step} in {res.elapsed_s:.1f}s: held-out PSNR "
          f"{ev.get('psnr', float('nan')):.2f} dB" + (f", feature MSE {fm:.5f}" if fm is not None else "")
          + (f", median depth error {1000 * dm:.1f} mm" if dm is not None else "") + f"; run folder {out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
