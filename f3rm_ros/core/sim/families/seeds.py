"""The development / evaluation seed split of :mod:`f3rm_ros.core.sim.families` (rule in its docstring)."""

from __future__ import annotations

import hashlib


_SPLIT_SALT = "f3rm_ros/sim-families/split"
_EVAL_MODULUS = 5  # 1 in 5 seeds is an evaluation seed


def is_eval_seed(seed: int) -> bool:
    """True for evaluation seeds (about 20%; rule in the module docstring). Report these only in aggregate."""
    h = hashlib.sha256(f"{_SPLIT_SALT}:{int(seed)}".encode()).digest()
    return int.from_bytes(h[:8], "little") % _EVAL_MODULUS == 0


def split_of(seed: int) -> str:
    """"eval" or "dev"."""
    return "eval" if is_eval_seed(seed) else "dev"


def _seeds(n: int, start: int, want_eval: bool) -> list[int]:
    out, s = [], int(start)
    while len(out) < n:
        if is_eval_seed(s) == want_eval:
            out.append(s)
        s += 1
    return out


def dev_seeds(n: int, start: int = 0) -> list[int]:
    """The first ``n`` development seeds >= ``start``: tune and look at these."""
    return _seeds(n, start, False)


def eval_seeds(n: int, start: int = 0) -> list[int]:
    """The first ``n`` evaluation seeds >= ``start``: only ever report results on them in aggregate."""
    return _seeds(n, start, True)
