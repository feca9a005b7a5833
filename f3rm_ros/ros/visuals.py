"""What the query node shows in RViz: grasp markers (gripper boxes, score labels) and heat-map colours.

Markers are built from the gripper model's boxes (:meth:`f3rm_ros.core.gripper.Gripper.boxes`), so
what RViz shows is what the planner checked for collisions. Grasps are coloured by source
(``SOURCE_COLORS``): demonstration-guided ones green, geometric (zero-shot) ones cyan; the best grasp
opaque, the others translucent and fading with rank. Each score label names the source (and the task),
and a legend text floats above the best grasp. All poses are in the world frame.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import numpy as np
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from f3rm_ros.ros.conversions import matrix_to_pose_msg

__all__ = ["heat_colors", "grasp_markers", "grasp_color", "markers_to_dict", "SOURCE_COLORS", "LEGEND"]

# source -> (best grasp RGBA, other grasps' RGBA at rank 1; later ranks fade towards min alpha)
SOURCE_COLORS = {
    "demo": ((0.1, 0.85, 0.2, 0.9), (0.45, 0.8, 0.35, 0.5)),  # guided by demonstrations: green
    "geometric": ((0.0, 0.8, 0.95, 0.9), (0.3, 0.55, 0.95, 0.5)),  # zero-shot geometric: cyan / blue
}
UNKNOWN_COLORS = ((0.9, 0.9, 0.9, 0.9), (0.7, 0.7, 0.7, 0.45))  # a source this module does not know: grey
LEGEND = "green: from a demonstration  |  cyan/blue: geometric (no demonstration)  |  opaque: best"

# anchor colours of the heat map (blue -> cyan -> green -> yellow -> red), evenly spaced over 0..1
_ANCHORS = np.array([[0.19, 0.07, 0.55], [0.12, 0.56, 0.87], [0.18, 0.80, 0.42], [0.96, 0.85, 0.20],
                     [0.85, 0.15, 0.10]])


def heat_colors(values: np.ndarray) -> np.ndarray:  # [N] in 0..1 -> [N, 3] uint8
    """Colours of a heat map (low = dark blue, high = red); values are clipped to [0, 1]."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(-1)), 0.0, 1.0)
    pos = v * (len(_ANCHORS) - 1)
    i = np.minimum(pos.astype(int), len(_ANCHORS) - 2)
    f = (pos - i)[:, None]
    rgb = _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f
    return np.round(rgb * 255).astype(np.uint8)


def _color(c: Sequence[float]) -> ColorRGBA:
    return ColorRGBA(r=float(c[0]), g=float(c[1]), b=float(c[2]), a=float(c[3]))


def grasp_color(source: str, rank: int) -> tuple[float, float, float, float]:
    """RGBA of a grasp's boxes: by source (``SOURCE_COLORS``), opaque for rank 0, then fading (alpha 0.5 at
    rank 1 down to 0.2)."""
    best, other = SOURCE_COLORS.get(source, UNKNOWN_COLORS)
    if int(rank) == 0:
        return best
    return (*other[:3], max(0.2, other[3] - 0.05 * (int(rank) - 1)))


def _text(frame_id: str, stamp: Any, ns: str, mid: int, at: np.ndarray, height: float, rgba, text: str) -> Marker:
    t = Marker(type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, ns=ns, id=mid)
    t.header.frame_id = frame_id
    if stamp is not None:
        t.header.stamp = stamp
    t.pose.position = Point(x=float(at[0]), y=float(at[1]), z=float(at[2]))
    t.pose.orientation.w = 1.0
    t.scale.z = float(height)
    t.color = _color(rgba)
    t.text = text
    return t


def grasp_markers(grasps: Sequence[Any], gripper: Any, frame_id: str = "world", stamp: Any = None,
                  ns: str = "grasps", text_height: float = 0.012) -> MarkerArray:
    """A MarkerArray: DELETEALL first, then per grasp one CUBE per gripper box (coloured by source and rank,
    :func:`grasp_color`) and a score label ("#rank score source[:task]"), and a legend above the best grasp.

    Args:
        grasps: objects with ``T_world_gripper`` (4, 4), ``score``, ``width``, ``task``, ``rank`` and
            ``source`` (:class:`f3rm_ros.core.grasp.Grasp`; no ``source`` counts as "demo"), best first.
        gripper: the :class:`~f3rm_ros.core.gripper.Gripper` whose boxes are drawn.
        frame_id: the world frame.
    """
    arr = MarkerArray()
    clear = Marker(action=Marker.DELETEALL)
    clear.header.frame_id = frame_id
    arr.markers.append(clear)
    mid = 0
    for g in grasps:
        T = np.asarray(g.T_world_gripper, dtype=np.float64)
        best = int(g.rank) == 0
        source = str(getattr(g, "source", "demo") or "demo")
        color = _color(grasp_color(source, int(g.rank)))
        opening = float(np.clip(g.width, 0.0, gripper.max_opening))
        for name, T_g_box, size in gripper.boxes(opening):
            m = Marker(type=Marker.CUBE, action=Marker.ADD, ns=f"{ns}/{'best' if best else 'other'}", id=mid)
            mid += 1
            ps = matrix_to_pose_msg(T @ T_g_box, frame_id=frame_id, stamp=stamp)
            m.header, m.pose = ps.header, ps.pose
            m.scale.x, m.scale.y, m.scale.z = (float(s) for s in size)
            m.color = color
            m.text = name
            arr.markers.append(m)
        top = T @ np.array([0.0, 0.0, 0.16, 1.0])  # above the wrist
        label = f"#{int(g.rank)} {float(g.score):.3f} {source}" + (f": {g.task}" if best and g.task else "")
        arr.markers.append(_text(frame_id, stamp, f"{ns}/scores", mid, top[:3], text_height,
                                 (1.0, 1.0, 1.0, 1.0) if best else (0.85, 0.85, 0.85, 0.8), label))
        mid += 1
        if best:
            arr.markers.append(_text(frame_id, stamp, f"{ns}/legend", mid, top[:3] + (0, 0, 2.5 * text_height),
                                     0.8 * text_height, (0.9, 0.9, 0.9, 0.9), LEGEND))
            mid += 1
    return arr


def markers_to_dict(arr: MarkerArray) -> list[dict]:
    """Plain JSON-able description of a MarkerArray (for saving the demo's markers to a file)."""
    out = []
    for m in arr.markers:
        p, q = m.pose.position, m.pose.orientation
        out.append({"ns": m.ns, "id": int(m.id), "type": int(m.type), "action": int(m.action),
                    "frame_id": m.header.frame_id, "position": [p.x, p.y, p.z],
                    "orientation_xyzw": [q.x, q.y, q.z, q.w], "scale": [m.scale.x, m.scale.y, m.scale.z],
                    "color_rgba": [m.color.r, m.color.g, m.color.b, m.color.a], "text": m.text})
    return out
