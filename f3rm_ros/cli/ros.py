"""`f3rm-ros`: command-line entry point for the ROS side of f3rm_ros.

    f3rm-ros selftest                   round-trip every service and the action between two real nodes over DDS
    f3rm-ros bringup CONFIG.yaml        run the nodes of a bringup file in one process (config/bringup_sim.yaml);
                                        --respawn: a process per node, started again when it dies
    f3rm-ros query "mug handle"         ask the query node for grasps (--max N, --json)
    f3rm-ros similarity TEXT            heat-map summary of a text query
    f3rm-ros load [CHECKPOINT]          make the query node load a checkpoint ("" = the newest)
    f3rm-ros params NODE                print a documented parameter file of a node (every declared parameter)
    f3rm-ros demo                       the end-to-end demo (sim camera -> capture -> train -> queries)

The client commands talk to the nodes under --namespace (default /f3rm) with a deadline (--timeout);
a refused request prints the node's reason and exits with status 1; an unreachable node (or a deadline
passed) exits 2; a node that went away while the command waited for it (killed, crashed) exits 3 at once,
without waiting out the deadline.
"""

from __future__ import annotations

import argparse
import json
import sys


def _client_call(args: argparse.Namespace, fn) -> int:
    from f3rm_ros.ros.client import F3RMClient, F3RMError, RequestFailed, ServerGone

    try:
        with F3RMClient(namespace=args.namespace) as client:
            return fn(client)
    except RequestFailed as e:
        print(f"refused: {e.reason}", file=sys.stderr)
        return 1
    except ServerGone as e:
        print(f"server gone: {e.reason}", file=sys.stderr)
        return 3
    except F3RMError as e:
        print(f"error: {e.reason}", file=sys.stderr)
        return 2


def _query(args: argparse.Namespace) -> int:
    import numpy as np

    from f3rm_ros.core.geometry import matrix_to_pose

    def fn(client) -> int:
        ws = None
        if args.workspace:
            v = args.workspace
            ws = (v[:3], v[3:])
        grasps = client.query_grasps(args.text, negatives=args.negative or (), max_grasps=args.max, task=args.task,
                                     workspace=ws, timeout=args.timeout)
        if args.json:
            out = []
            for g in grasps:
                t, q = matrix_to_pose(g.pose)
                out.append({"rank": g.rank, "score": g.score, "source": g.source, "task": g.task, "width": g.width,
                            "language_similarity": g.language_similarity, "quality": g.quality, "frame_id": g.frame_id,
                            "position": t.tolist(), "quat_xyzw": q.tolist(), "matrix": np.asarray(g.pose).tolist()})
            print(json.dumps(out, indent=2))
        else:
            print(f"{len(grasps)} grasps for {args.text!r} (best first; world frame, metres; source: demo = guided "
                  f"by a task's demonstrations, geometric = zero-shot):")
            for g in grasps:
                t, q = matrix_to_pose(g.pose)
                qa = g.quality
                print(f"  #{g.rank:<2d} score {g.score:7.3f}  {g.source or '?':9s} task {g.task!r}  sim "
                      f"{g.language_similarity:5.3f}  antipodal {qa.get('antipodal_deg', 0.0):4.1f} deg  contact width "
                      f"{qa.get('contact_width_m', 0.0):.3f}  quality {qa.get('quality', 0.0):.3f}\n"
                      f"      xyz ({t[0]:+.3f}, {t[1]:+.3f}, {t[2]:+.3f})  quat xyzw ({q[0]:+.3f}, {q[1]:+.3f}, "
                      f"{q[2]:+.3f}, {q[3]:+.3f})  width {g.width:.3f}")
        return 0

    return _client_call(args, fn)


def _similarity(args: argparse.Namespace) -> int:
    def fn(client) -> int:
        r = client.query_similarity(args.text, negatives=args.negative or (), min_similarity=args.min,
                                    timeout=args.timeout)
        info = {"text": args.text, "points": int(len(r.points)), "max_similarity": r.max_similarity,
                "mean_similarity": r.mean_similarity, "peak": r.peak.tolist()}
        print(json.dumps(info) if args.json else
              f"{args.text!r}: {info['points']} points >= {args.min}, max {r.max_similarity:.3f}, mean "
              f"{r.mean_similarity:.3f}, peak at ({r.peak[0]:+.3f}, {r.peak[1]:+.3f}, {r.peak[2]:+.3f})")
        return 0

    return _client_call(args, fn)


def _load(args: argparse.Namespace) -> int:
    def fn(client) -> int:
        info = client.load_field(args.checkpoint, timeout=args.timeout)
        print(info.message or f"loaded {info.checkpoint_path}")
        return 0

    return _client_call(args, fn)


def _params(args: argparse.Namespace) -> int:
    import rclpy

    from f3rm_ros.ros.bringup import node_class
    from f3rm_ros.ros.paramfile import write_param_file

    cls = node_class(args.node)
    with rclpy.init(args=["--ros-args", "-p", "autostart:=false"]):
        node = cls()
        try:
            header = (f"Parameters of {args.node} (f3rm_ros), generated by `f3rm-ros params {args.node}` from the\n"
                      f"config dataclasses: every declared parameter with its default and help text.\n"
                      f"Keys match the node in any namespace (/**/{args.node}).")
            # built with autostart off (no side effects); the default is on (the nodes' ``autostart`` param)
            vals = {"autostart": True} if node.has_parameter("autostart") else {}
            sys.stdout.write(write_param_file(node, header, values=vals))
        finally:
            node.destroy_node()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="f3rm-ros", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("selftest", help="round-trip every f3rm_ros interface between two nodes over DDS")

    b = sub.add_parser("bringup", help="run the nodes of a bringup YAML in one process")
    b.add_argument("config", help="bringup file, e.g. config/bringup_sim.yaml")
    b.add_argument("--params-file", action="append", default=[], help="extra ROS parameter file (wins)")
    b.add_argument("--threads", type=int, default=None, help="executor threads")
    b.add_argument("--ready-file", default=None, help="write this file once every node is up")
    b.add_argument("--respawn", action=argparse.BooleanOptionalAction, default=None,
                   help="one process per node, started again when it dies (default: the file's 'respawn' key)")

    def client_args(p: argparse.ArgumentParser, timeout: float) -> None:
        p.add_argument("--namespace", default="/f3rm", help="namespace of the f3rm nodes")
        p.add_argument("--timeout", type=float, default=timeout, help="deadline in seconds")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    q = sub.add_parser("query", help="grasps for a text query")
    q.add_argument("text")
    q.add_argument("--max", type=int, default=0, help="grasps at most (0 = the node's default)")
    q.add_argument("--negative", action="append", help="negative phrase (repeatable)")
    q.add_argument("--task", default="", help="explicit task name")
    q.add_argument("--workspace", type=float, nargs=6, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="workspace box in the world frame, metres")
    client_args(q, 60.0)

    s = sub.add_parser("similarity", help="heat-map summary of a text query")
    s.add_argument("text")
    s.add_argument("--min", type=float, default=0.0, help="leave out points below this similarity")
    s.add_argument("--negative", action="append", help="negative phrase (repeatable)")
    client_args(s, 60.0)

    ld = sub.add_parser("load", help="make the query node load a checkpoint")
    ld.add_argument("checkpoint", nargs="?", default="", help="path under its checkpoint root ('' = newest)")
    client_args(ld, 120.0)

    pp = sub.add_parser("params", help="print a documented parameter file of a node")
    pp.add_argument("node", help="executable name, e.g. query_node")

    d = sub.add_parser("demo", help="the end-to-end demo in the simulated world")
    d.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of f3rm_ros.ros.demo (see --help there)")

    args = parser.parse_args(argv)
    if args.command == "selftest":
        from f3rm_ros.ros.selftest import main as selftest

        return selftest([])
    if args.command == "bringup":
        from pathlib import Path

        from f3rm_ros.ros.bringup import BringupError, run_bringup

        try:
            return run_bringup(args.config, [Path(p) for p in args.params_file], args.threads, args.ready_file,
                               args.respawn)
        except BringupError as e:
            print(f"bringup: {e}", file=sys.stderr)
            return 2
    if args.command == "query":
        return _query(args)
    if args.command == "similarity":
        return _similarity(args)
    if args.command == "load":
        return _load(args)
    if args.command == "params":
        return _params(args)
    if args.command == "demo":
        from f3rm_ros.ros.demo import main as demo

        return demo(args.rest)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
