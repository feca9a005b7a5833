"""`f3rm-ros`: command-line entry point for the ROS side of f3rm_ros.

    f3rm-ros selftest     round-trip every service and the action between two real nodes over DDS
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="f3rm-ros", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("selftest", help="round-trip every f3rm_ros interface between two nodes over DDS")
    args = parser.parse_args(argv)
    if args.command == "selftest":
        from f3rm_ros.ros.selftest import main as selftest

        return selftest([])
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
