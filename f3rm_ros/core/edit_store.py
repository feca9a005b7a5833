"""An edit stack saved beside its field, so that edits outlive the query server and a refresh can use them (issue 18).

The query node keeps the stack of :class:`~f3rm_ros.core.edits.SceneEdit` s of the field it serves in a JSON file
beside the field's checkpoint (:func:`edit_stack_path`), rewritten atomically (:mod:`f3rm_ros.core.io`) after every
edit and undo. A server that loads the same checkpoint again (after a restart, or asked to) restores the stack
(:func:`load_edit_stack`); a refresh (the train node's ``TrainFields`` with ``edits_path``) reads it to know which
places changed. The file names the checkpoint it belongs to, with its size and modification time: a stack is never
applied to another field, nor to a checkpoint file that was rewritten since.

    {"format": "f3rm_ros.edits", "version": 1, "saved": "2026-12-08T10:00:00Z",
     "checkpoint": "/abs/run/field.ckpt", "checkpoint_size": 123456, "checkpoint_mtime_ns": 1796...,
     "edits": [  # oldest first, as EditedField.edits
        {"label": "bowl", "removed": false, "T_world_new_old": [[4 x 4]],  # null when removed; world frame, metres
         "region": {"type": "voxels", "lo": [x, y, z], "voxel": 0.01, "shape": [X, Y, Z],
                    "occ": "<base64 of numpy.packbits(occ, C order)>"}},
        {"label": "box", "removed": true, "T_world_new_old": null,
         "region": {"type": "box", "center": [3], "half_extents": [3], "R": [[3 x 3]]}}]}

Everything read is checked (a rigid motion, a non-empty region, a sane grid size): a malformed or foreign file raises
:class:`EditStoreError` with the reason and the file, never a half-applied stack.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from f3rm_ros.core.edits import (MAX_EDITS, BoxRegion, EditedField, EditError, FloorFill, SceneEdit, Unmix,
                                 VoxelRegion, check_rigid)
from f3rm_ros.core.io import atomic_write_json

__all__ = ["EDITS_FORMAT", "EDITS_VERSION", "EditStoreError", "SavedEdits", "edit_stack_path", "edits_to_json",
           "edits_from_json", "save_edit_stack", "load_edit_stack", "remove_edit_stack", "checkpoint_stamp",
           "keep_field_edits", "restore_field_edits", "checkpoint_live_edits", "carry_over_edits"]

EDITS_FORMAT = "f3rm_ros.edits"
EDITS_VERSION = 1
MAX_VOXELS = 64_000_000  # a region grid larger than this is refused (a corrupt shape must not exhaust memory)


class EditStoreError(ValueError):
    """A saved edit stack that cannot be used (unreadable, malformed, of another field): the message says why."""


@dataclass(frozen=True)
class SavedEdits:
    """A stack read back: the edits (oldest first), the checkpoint they were made on and when they were saved."""

    edits: tuple[SceneEdit, ...]
    checkpoint: Path
    saved: str
    path: Path


def edit_stack_path(checkpoint: str | Path, owner: str = "") -> Path:
    """Where the edit stack of ``checkpoint`` is kept: ``<checkpoint>.edits.json`` beside it, or
    ``<checkpoint>.<owner>.edits.json`` (``owner``: the server's name, e.g. ``f3rm.query_node``, so that two servers
    of one field keep their own stacks)."""
    p = Path(checkpoint)
    tag = "".join(c if c.isalnum() or c in "._-" else "_" for c in owner.strip("/").replace("/", "."))
    return p.with_name(f"{p.name}.{tag}.edits.json" if tag else f"{p.name}.edits.json")


def checkpoint_stamp(checkpoint: str | Path) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a checkpoint file: what tells a rewritten checkpoint apart."""
    st = os.stat(checkpoint)
    return int(st.st_size), int(st.st_mtime_ns)


# ------------------------------------------------------------------------------------------------ to JSON
def _region_to_json(region: Any) -> dict[str, Any]:
    if isinstance(region, BoxRegion):
        return {"type": "box", "center": region.center.tolist(), "half_extents": region.half_extents.tolist(),
                "R": region.R.tolist()}
    if isinstance(region, VoxelRegion):
        occ = np.ascontiguousarray(region.occ, dtype=bool)
        return {"type": "voxels", "lo": region.lo.tolist(), "voxel": float(region.voxel), "shape": list(occ.shape),
                "occ": base64.b64encode(np.packbits(occ.reshape(-1)).tobytes()).decode("ascii")}
    raise EditStoreError(f"cannot save a region of type {type(region).__name__} (BoxRegion or VoxelRegion)")


def edits_to_json(edits: Sequence[SceneEdit]) -> list[dict[str, Any]]:
    """The JSON entries of ``edits`` (oldest first), as the file holds them."""
    return [{"label": e.label, "removed": e.removed, "region": _region_to_json(e.region),
             "T_world_new_old": None if e.removed else np.asarray(e.T_world_new_old, np.float64).tolist(),
             **({"fill": {"offset": e.fill.offset.tolist(), "z_lo": e.fill.z_lo, "z_hi": e.fill.z_hi}}
                if e.fill is not None else {}),
             **({"unmix": {"direction": e.unmix.direction.tolist(), "ring_m": e.unmix.ring_m,
                           "floor": e.unmix.floor}}
                if e.unmix is not None else {})}
            for e in edits]


# ---------------------------------------------------------------------------------------------- from JSON
def _floats(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise EditStoreError(f"{what} is not a list of numbers") from None
    if a.shape != shape:
        raise EditStoreError(f"{what} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise EditStoreError(f"{what} has non-finite values")
    return a


def _region_from_json(d: Any, what: str) -> BoxRegion | VoxelRegion:
    if not isinstance(d, dict):
        raise EditStoreError(f"{what} is not an object")
    kind = d.get("type")
    if kind == "box":
        return BoxRegion(_floats(d.get("center"), (3,), f"{what}.center"),
                         _floats(d.get("half_extents"), (3,), f"{what}.half_extents"),
                         _floats(d.get("R"), (3, 3), f"{what}.R"))
    if kind == "voxels":
        shape = d.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)):
            raise EditStoreError(f"{what}.shape must be 3 positive integers, got {shape!r}")
        n = int(np.prod(shape))
        if n > MAX_VOXELS:
            raise EditStoreError(f"{what}.shape {shape} has {n} voxels (at most {MAX_VOXELS})")
        try:
            bits = np.frombuffer(base64.b64decode(str(d.get("occ", "")), validate=True), dtype=np.uint8)
        except (binascii.Error, ValueError):
            raise EditStoreError(f"{what}.occ is not base64") from None
        if len(bits) != (n + 7) // 8:
            raise EditStoreError(f"{what}.occ holds {len(bits)} bytes, its shape {shape} needs {(n + 7) // 8}")
        occ = np.unpackbits(bits)[:n].astype(bool).reshape(shape)
        voxel = d.get("voxel")
        if isinstance(voxel, bool) or not isinstance(voxel, (int, float)):
            raise EditStoreError(f"{what}.voxel must be a number, got {voxel!r}")
        return VoxelRegion(_floats(d.get("lo"), (3,), f"{what}.lo"), float(voxel), occ)
    raise EditStoreError(f"{what}.type must be 'box' or 'voxels', got {kind!r}")


def _fill_from_json(d: Any, what: str) -> FloorFill | None:
    if d is None:  # files written before floor fills: the floor stays as the field has it
        return None
    if not isinstance(d, dict):
        raise EditStoreError(f"{what} is not an object")
    z = _floats([d.get("z_lo"), d.get("z_hi")], (2,), f"{what}.z_lo/z_hi")
    try:
        return FloorFill(_floats(d.get("offset"), (3,), f"{what}.offset"), float(z[0]), float(z[1]))
    except EditError as err:
        raise EditStoreError(f"{what}: {err}") from None


def _unmix_from_json(d: Any, what: str) -> Unmix | None:
    if d is None:  # files written before unmixing, or an edit without it
        return None
    if not isinstance(d, dict):
        raise EditStoreError(f"{what} is not an object")
    direction = d.get("direction")
    n = len(direction) if isinstance(direction, list) else -1
    if n < 1:
        raise EditStoreError(f"{what}.direction must be a list of numbers")
    try:
        ring = float(_floats([d.get("ring_m")], (1,), f"{what}.ring_m")[0])
        floor = float(_floats([d.get("floor", 0.0)], (1,), f"{what}.floor")[0])  # files before the floor: 0
        return Unmix(_floats(direction, (n,), f"{what}.direction"), ring, floor)
    except EditError as err:
        raise EditStoreError(f"{what}: {err}") from None


def edits_from_json(entries: Any, where: str = "edits") -> tuple[SceneEdit, ...]:
    """The edits of JSON ``entries`` (as :func:`edits_to_json` writes them), each checked; EditStoreError naming the
    first bad entry and what is wrong with it."""
    if not isinstance(entries, list):
        raise EditStoreError(f"{where} must be a list of edits")
    if len(entries) > MAX_EDITS:
        raise EditStoreError(f"{where} holds {len(entries)} edits (at most {MAX_EDITS})")
    out = []
    for i, e in enumerate(entries):
        what = f"{where}[{i}]"
        if not isinstance(e, dict):
            raise EditStoreError(f"{what} is not an object")
        removed, T = e.get("removed"), e.get("T_world_new_old")
        if not isinstance(removed, bool):
            raise EditStoreError(f"{what}.removed must be true or false")
        if removed != (T is None):
            raise EditStoreError(f"{what}: a removal has no motion (T_world_new_old null), a move has one")
        try:
            region = _region_from_json(e.get("region"), f"{what}.region")
            M = None if removed else check_rigid(_floats(T, (4, 4), f"{what}.T_world_new_old"), "T_world_new_old")
        except EditError as err:  # an empty region, a non-rigid motion...
            raise EditStoreError(f"{what}: {err}") from None
        label = e.get("label", "")
        fill = _fill_from_json(e.get("fill"), f"{what}.fill")
        unmix = _unmix_from_json(e.get("unmix"), f"{what}.unmix")
        try:
            out.append(SceneEdit(region, M, label if isinstance(label, str) else str(label), fill, unmix))
        except EditError as err:  # a fill or an unmix on a box
            raise EditStoreError(f"{what}: {err}") from None
    return tuple(out)


# ---------------------------------------------------------------------------------------------------- files
def save_edit_stack(path: str | Path, checkpoint: str | Path, edits: Sequence[SceneEdit]) -> Path:
    """Write the stack ``edits`` (oldest first) of the field in ``checkpoint`` to ``path``, atomically. OSError when
    the checkpoint is gone or the disk refuses (the previous file, if any, stays whole)."""
    ckpt = Path(checkpoint).resolve()
    size, mtime = checkpoint_stamp(ckpt)
    return atomic_write_json(path, {"format": EDITS_FORMAT, "version": EDITS_VERSION,
                                    "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "checkpoint": str(ckpt), "checkpoint_size": size, "checkpoint_mtime_ns": mtime,
                                    "edits": edits_to_json(edits)}, indent=1)


def load_edit_stack(path: str | Path, checkpoint: str | Path | None = None, check_stamp: bool = True) -> SavedEdits:
    """The stack saved at ``path``; with ``checkpoint``, it must be the stack of that file. EditStoreError with the
    reason: no file, not JSON, another format or version, a malformed edit, a stack of another checkpoint, or (with
    ``check_stamp``) of a checkpoint file that was rewritten or is gone since the stack was saved."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EditStoreError(f"{path}: no saved edit stack there") from None
    except (OSError, ValueError) as e:
        raise EditStoreError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != EDITS_FORMAT:
        raise EditStoreError(f"{path}: not an edit stack (format must be {EDITS_FORMAT!r})")
    if data.get("version") != EDITS_VERSION:
        raise EditStoreError(f"{path}: edit stack version {data.get('version')!r}, this code reads {EDITS_VERSION}")
    saved_for = data.get("checkpoint")
    if not isinstance(saved_for, str) or not saved_for:
        raise EditStoreError(f"{path}: names no checkpoint")
    ckpt = Path(saved_for)
    if checkpoint is not None and Path(checkpoint).resolve() != ckpt:
        raise EditStoreError(f"{path}: the edits were made on {ckpt}, not on {Path(checkpoint).resolve()}")
    try:
        stamp = checkpoint_stamp(ckpt) if check_stamp else None
    except OSError:
        raise EditStoreError(f"{path}: the field the edits were made on, {ckpt}, is gone") from None
    if check_stamp and stamp != (data.get("checkpoint_size"), data.get("checkpoint_mtime_ns")):
        raise EditStoreError(f"{path}: the checkpoint {ckpt} was rewritten after the edits were saved (size or time "
                             f"differ): the edits may not describe it")
    edits = edits_from_json(data.get("edits"), f"{path}: edits")
    return SavedEdits(edits, ckpt, str(data.get("saved", "")), path)


def remove_edit_stack(path: str | Path) -> bool:
    """Delete a saved stack (a single unlink: atomic); True if there was one."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------------ a served field
def keep_field_edits(field: Any, checkpoint: str | Path | None, owner: str = "") -> tuple[Path | None, str]:
    """Keep the edit stack of a served ``field`` (an :class:`EditedField`, or a plain field: no edits) beside its
    ``checkpoint``: saved atomically when it has edits, the file removed when it has none. Returns (the file, or None
    when no stack is kept now, and '' or why it could not be written: no checkpoint file, a disk error)."""
    # the edits a checkpoint came with (a refresh through them) are in the checkpoint; the server's own come after
    edits = field.edits[field.fixed:] if isinstance(field, EditedField) else ()
    if checkpoint is None:
        return None, "the field was not loaded from a checkpoint file: its edits are not saved" if edits else ""
    path = edit_stack_path(checkpoint, owner)
    try:
        if not edits:
            remove_edit_stack(path)
            return None, ""
        return save_edit_stack(path, checkpoint, edits), ""
    except (OSError, EditStoreError) as e:
        return None, f"edit stack not saved to {path}: {type(e).__name__}: {e}"


def restore_field_edits(field: Any, checkpoint: str | Path, owner: str = "") -> tuple[Any, int, str]:
    """``field`` (just loaded from ``checkpoint``) with the edit stack saved beside it, if there is one: (the field,
    as an :class:`EditedField` when edits were restored; how many; '' or why a saved stack was not used: the field is
    served as trained then, and the file is left as it is for whoever looks into it)."""
    path = edit_stack_path(checkpoint, owner)
    if not path.exists():
        return field, 0, ""
    try:
        saved = load_edit_stack(path, checkpoint)
    except EditStoreError as e:
        return field, 0, str(e)
    if not saved.edits:
        return field, 0, ""
    return EditedField(field, saved.edits), len(saved.edits), ""


def checkpoint_live_edits(ck: Any, where: str = "checkpoint") -> tuple[tuple[SceneEdit, ...], dict[int, int]]:
    """The edits a checkpoint dict carries (a refresh through the edits, ``refresh_field(live_edits=...)``): (the
    edits, oldest first; scene version -> how many of them its frames saw). ((), {}) for a plain field.
    EditStoreError when the entry is malformed."""
    live = ck.get("live_edits") if isinstance(ck, dict) else None
    if not live:
        return (), {}
    if not isinstance(live, dict):
        raise EditStoreError(f"{where}: live_edits must be a mapping")
    edits = edits_from_json(live.get("edits"), f"{where}: live_edits")
    try:
        versions = {int(k): int(v) for k, v in dict(live.get("versions") or {}).items()}
    except (TypeError, ValueError):
        raise EditStoreError(f"{where}: live_edits versions must map scene versions to edit counts") from None
    if any(not 0 <= v <= len(edits) for v in versions.values()):
        raise EditStoreError(f"{where}: live_edits versions name counts outside [0, {len(edits)}]")
    return edits, versions


def carry_over_edits(old: Any, new: Any) -> tuple[Any, int]:
    """A field refreshed through edits (``new``, its :attr:`~f3rm_ros.core.edits.EditedField.fixed` edits from the
    refresh) swapped in for the served ``old`` one: the edits ``old`` got after the ones the refresh went through (made
    while it ran) are put on top of ``new``, so they are not lost. Only when ``new``'s carried edits are exactly the
    oldest of ``old``'s stack (same regions and motions): otherwise ``new`` is another field and takes nothing.
    Returns (the field to serve, how many edits were carried over)."""
    if not isinstance(old, EditedField) or not isinstance(new, EditedField) or not new.fixed or \
            len(new.edits) != new.fixed:  # new already has edits of its own (restored): nothing to add
        return new, 0
    carried = new.edits[:new.fixed]
    if len(old.edits) <= len(carried) or edits_to_json(old.edits[:len(carried)]) != edits_to_json(carried):
        return new, 0
    extra = old.edits[len(carried):]
    return EditedField(new, extra), len(extra)
