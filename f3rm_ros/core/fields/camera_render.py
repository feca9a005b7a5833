"""Rendering every pixel of a camera, with the field passed in as a function (nerfacc's lesson: the
renderer imports no model class).

``rays_fn(origins [n, 3], directions [n, 3]) -> {"rgb": [n, 3], "depth": [n], "accumulation": [n],
"features": [n, D] (optional)}`` renders a chunk of rays in the field frame (unit directions; depth is
the distance along the ray). For a :class:`~f3rm_ros.core.fields.model.FieldModel` in eval mode::

    out = render_camera(lambda o, d: model.render_rays(o, d, None, training=False), K, c2w_nerf)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from f3rm_ros.core.cameras import CameraIntrinsics, generate_rays, intrinsics_tensor, pixel_centres

__all__ = ["render_camera", "RaysFn"]

RaysFn = Callable[[Tensor, Tensor], dict[str, Tensor]]


def render_camera(rays_fn: RaysFn, K: CameraIntrinsics, c2w_nerf: Tensor, chunk: int = 16384, amp: bool = False,
                  feature_sink: Callable[[Tensor, int], None] | None = None) -> dict[str, Tensor]:
    """Render every pixel of a camera (OpenCV camera-to-world in the field frame ``[4, 4]``) in chunks.

    Args:
        rays_fn: the field as a function of ray origins and unit directions (see the module docstring).
        K: the camera (its pixel grid is rendered, row-major).
        c2w_nerf: camera-to-world, OpenCV, field frame  # [4, 4]; rays are generated on its device.
        chunk: rays per ``rays_fn`` call.
        amp: fp16 autocast on CUDA.
        feature_sink: ``feature_sink(features [n, D], first_pixel_index)``, if given, receives each chunk's
            features (row-major pixel order) instead of them being kept (an [H, W, 768] image is large).

    Returns:
        rgb [H,W,3], depth [H,W], accumulation [H,W], features [H,W,D] (when ``rays_fn`` returns them and
        there is no ``feature_sink``), directions [H,W,3] (unit, field frame); float32.
    """
    dev = c2w_nerf.device
    px = pixel_centres(K.width, K.height, device=dev).reshape(-1, 2)
    K9 = intrinsics_tensor(K, device=dev)
    outs: dict[str, list[Tensor]] = {}
    for s in range(0, px.shape[0], chunk):
        p = px[s:s + chunk]
        o, d = generate_rays(K9.expand(p.shape[0], -1), c2w_nerf.float().expand(p.shape[0], 4, 4), p)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp and dev.type == "cuda"):
            r = rays_fn(o, d)
        if feature_sink is not None and "features" in r:
            feature_sink(r.pop("features").float(), s)
        for k in ("rgb", "depth", "accumulation", "features"):
            if k in r:
                outs.setdefault(k, []).append(r[k].float())
        outs.setdefault("directions", []).append(d)
    H, W = K.height, K.width
    return {k: torch.cat(v).reshape(H, W, -1).squeeze(-1) if k in ("depth", "accumulation")
            else torch.cat(v).reshape(H, W, -1) for k, v in outs.items()}
