"""The object families of :mod:`f3rm_ros.core.sim.families`: :class:`Family`, :data:`FAMILIES`, the colour
:data:`PALETTE`, default weights, the things in no family (for absent queries) and :func:`family_table`."""

from __future__ import annotations

from dataclasses import dataclass, field


GENERATOR_VERSION = 1  # bump when the same (seed, config) gives a different scene
GRIPPER_MAX_WIDTH_M = 0.074  # widest footprint a Panda (80 mm opening) is expected to close around


PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.10), "green": (0.16, 0.58, 0.22), "blue": (0.12, 0.28, 0.80),
    "yellow": (0.95, 0.80, 0.10), "orange": (0.95, 0.48, 0.08), "purple": (0.50, 0.22, 0.66),
    "pink": (0.95, 0.52, 0.70), "white": (0.93, 0.93, 0.90), "black": (0.09, 0.09, 0.10),
    "grey": (0.52, 0.52, 0.54), "brown": (0.45, 0.28, 0.15), "teal": (0.10, 0.55, 0.55),
    "clear": (0.82, 0.88, 0.90), "amber": (0.80, 0.50, 0.12),
}
_GENERAL = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "grey", "brown", "teal")
_METAL = (0.62, 0.62, 0.65)
_DARK_METAL = (0.33, 0.33, 0.36)


@dataclass(frozen=True)
class Family:
    """One object family.

    Attributes:
        name: the category ("mug"); also what a user types.
        generator: mesh generator of :mod:`f3rm_ros.core.sim.meshes`.
        ranges: generator parameter -> (low, high), sampled uniformly (``size`` of a box: see ``_box_size``).
        synonyms: other words for it ("cup"); objects list them colour-prefixed ("red cup").
        grasp_parts: parts a gripper can hold, queried as "<object> <part>".
        standing_only_parts: of those, the ones only queried on a standing object (rims, caps).
        lying: how it can lie: "none", "revolved" (on its side) or "box" (on another face).
        related: families a vision-language model would confuse with it (never absent queries then).
        colours: palette names it may take.
        part_colors: fixed colours of some parts (metal heads).
    """

    name: str
    generator: str
    ranges: dict[str, tuple[float, float]]
    synonyms: tuple[str, ...] = ()
    grasp_parts: tuple[str, ...] = ()
    standing_only_parts: tuple[str, ...] = ()
    lying: str = "none"
    related: tuple[str, ...] = ()
    colours: tuple[str, ...] = _GENERAL
    part_colors: dict[str, tuple[float, float, float]] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("mug", "mug", {"radius": (0.034, 0.045), "height": (0.08, 0.11), "wall": (0.0035, 0.005),
                          "handle_radius": (0.024, 0.032)},
           ("cup", "coffee mug"), ("handle", "rim"), ("rim",), "revolved", ("cup", "glass")),
    Family("cup", "cup", {"radius": (0.03, 0.045), "height": (0.06, 0.10), "taper": (0.7, 1.0),
                          "wall": (0.003, 0.004)},
           ("tumbler", "teacup"), ("rim",), ("rim",), "revolved", ("mug", "glass")),
    Family("glass", "glass", {"radius": (0.028, 0.038), "height": (0.10, 0.16), "taper": (0.75, 0.95)},
           ("drinking glass", "tumbler"), ("rim",), ("rim",), "revolved", ("mug", "cup", "bottle"),
           ("clear", "blue", "green", "amber")),
    Family("bowl", "bowl", {"radius": (0.055, 0.09), "height": (0.04, 0.07), "wall": (0.004, 0.006),
                            "foot_radius": (0.025, 0.04)},
           ("dish",), ("rim",), ("rim",), "none", ("plate", "pot")),
    Family("plate", "plate", {"radius": (0.09, 0.125), "height": (0.02, 0.03), "lip": (0.01, 0.016)},
           ("dish", "dinner plate"), ("rim",), ("rim",), "none", ("bowl", "pot")),
    Family("pot", "pot", {"radius": (0.06, 0.085), "height": (0.06, 0.11), "handle_length": (0.10, 0.15),
                          "handle_rise": (0.08, 0.26)},
           ("saucepan", "cooking pot"), ("handle", "rim"), ("rim",), "none", ("bowl", "plate"),
           part_colors={"handle": (0.08, 0.08, 0.08)}),
    Family("bottle", "bottle", {"radius": (0.025, 0.038), "height": (0.17, 0.27), "shoulder": (0.5, 0.7),
                                "neck_radius": (0.010, 0.015), "neck_length": (0.03, 0.06),
                                "cap_height": (0.015, 0.022)},
           ("water bottle", "flask"), ("neck", "cap"), ("cap",), "revolved", ("can", "glass")),
    Family("can", "can", {"radius": (0.026, 0.036), "height": (0.08, 0.15)},
           ("soda can", "tin"), (), (), "revolved", ("bottle",)),
    Family("box", "box", {}, ("carton", "package"), (), (), "box"),
    Family("ball", "ball", {"radius": (0.025, 0.037)}, ("toy ball",), (), (), "none"),
    Family("screwdriver", "screwdriver", {"handle_length": (0.08, 0.12), "handle_radius": (0.012, 0.018),
                                          "shaft_length": (0.06, 0.12), "shaft_radius": (0.0025, 0.004)},
           ("tool",), ("handle",), (), "none", ("hammer", "spatula"),
           part_colors={"shaft": _METAL, "tip": _DARK_METAL}),
    Family("hammer", "hammer", {"handle_length": (0.2, 0.3), "handle_radius": (0.011, 0.015),
                                "head_length": (0.09, 0.13), "head_width": (0.022, 0.032),
                                "head_height": (0.022, 0.032)},
           ("mallet", "tool"), ("handle", "head"), (), "none", ("screwdriver", "spatula"),
           part_colors={"head": _DARK_METAL}),
    Family("spatula", "spatula", {"handle_length": (0.12, 0.18), "handle_width": (0.018, 0.026),
                                  "handle_height": (0.016, 0.022), "blade_length": (0.07, 0.11),
                                  "blade_width": (0.05, 0.08)},
           ("turner", "tool"), ("handle",), (), "none", ("screwdriver", "hammer"),
           part_colors={"blade": _METAL}),
    Family("jar", "jar", {"radius": (0.028, 0.039), "height": (0.07, 0.14), "lid_height": (0.012, 0.02)},
           ("glass jar", "container"), ("lid",), ("lid",), "revolved", ("can", "bottle", "glass"),
           part_colors={}),
    Family("brush", "brush", {"handle_length": (0.10, 0.16), "handle_width": (0.02, 0.026),
                              "handle_height": (0.017, 0.022), "head_length": (0.05, 0.08),
                              "head_width": (0.04, 0.06), "head_height": (0.022, 0.032),
                              "bristle_length": (0.012, 0.022)},
           ("scrubbing brush", "scrub brush"), ("handle",), (), "none", ("spatula",)),
    Family("banana", "banana", {"length": (0.16, 0.22), "radius": (0.015, 0.02), "bend": (0.6, 1.1)},
           ("fruit",), (), (), "none", (), ("yellow", "green", "brown")),
]}

DEFAULT_WEIGHTS: dict[str, float] = {"mug": 2.0, "cup": 1.0, "glass": 1.0, "bowl": 1.0, "plate": 0.7, "pot": 0.7,
                                     "bottle": 1.5, "can": 1.0, "box": 1.5, "ball": 1.0, "screwdriver": 1.0,
                                     "hammer": 1.0, "spatula": 1.0, "banana": 0.7, "jar": 0.8, "brush": 0.7}

# things in no family, for absent queries (no word shared with any family name, synonym or part)
OTHER_THINGS: tuple[str, ...] = ("teapot", "scissors", "apple", "phone", "wrench", "sponge", "stapler", "laptop",
                                 "pen", "remote control", "calculator", "fork", "spoon", "knife", "keyboard",
                                 "wallet", "pliers", "lemon", "candle", "watch")


def family_table() -> str:
    """One line per family: generator, parameter ranges, synonyms, graspable parts, how it lies."""
    lines = []
    for f in FAMILIES.values():
        rng = ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in f.ranges.items()) or "size: flat/tall/long/cube"
        lines.append(f"{f.name:12s} generator {f.generator:12s} {rng}\n{'':12s} synonyms {list(f.synonyms)}, "
                     f"graspable parts {list(f.grasp_parts)}, lies: {f.lying}, colours {len(f.colours)}")
    return "\n".join(lines)
