"""The launch files, bringup files, parameter files and RViz config held against the code.

``launch``/``launch_ros`` are not installable here, so the launch files are read with ``ast``: every
executable exists in scripts/nodes and is installed by CMakeLists.txt; every parameter file they
name exists; every parameter set in config/*.yaml, in a launch file's inline dict or in a bringup
file is declared by its node (each node class is instantiated in-process with rclpy and asked);
every declared parameter has a description and a default; remapped topics are topics the node uses;
the RViz config shows the query node's topics in the world frame.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = sorted((ROOT / "launch").glob("*.launch.py"))
CONFIG = ROOT / "config"
NODES = ["capture_node", "train_node", "query_node", "sim_camera_node", "camera_relay_node"]


def launch_nodes(path: Path) -> list[dict]:
    """Node/LifecycleNode actions of a launch file: executable, name, yaml files, inline dicts, remaps."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", "")) in
                ("Node", "LifecycleNode")):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        exe = ast.literal_eval(kw["executable"])
        pkg = ast.literal_eval(kw["package"])
        yamls, inline, remaps = [], {}, []
        if "parameters" in kw:
            for el in kw["parameters"].elts:
                if isinstance(el, ast.Dict):
                    for k, v in zip(el.keys, el.values, strict=True):
                        inline[ast.literal_eval(k)] = ast.literal_eval(v) if isinstance(v, ast.Constant) else v
                else:
                    yamls += [n.value for n in ast.walk(el) if isinstance(n, ast.Constant)
                              and isinstance(n.value, str) and n.value.endswith(".yaml")]
        if "remappings" in kw:
            for el in kw["remappings"].elts:
                remaps.append(ast.literal_eval(el.elts[0]))
        name = ast.literal_eval(kw["name"]) if "name" in kw else exe
        out.append({"package": pkg, "executable": exe, "name": name, "yamls": yamls, "inline": inline,
                    "remaps": remaps, "lifecycle": getattr(call.func, "id", "") == "LifecycleNode"})
    return out


def launch_arguments(path: Path) -> tuple[set[str], set[str]]:
    """(declared launch arguments, LaunchConfiguration names used)."""
    tree = ast.parse(path.read_text())
    declared, used = set(), set()
    for call in ast.walk(tree):
        if isinstance(call, ast.Call):
            fn = getattr(call.func, "id", getattr(call.func, "attr", ""))
            if fn == "DeclareLaunchArgument":
                declared.add(ast.literal_eval(call.args[0]))
            elif fn == "LaunchConfiguration":
                used.add(ast.literal_eval(call.args[0]))
    return declared, used


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """One instance of every node class (autostart off, roots in a temporary folder), in one rclpy context."""
    from rclpy.parameter import Parameter

    from f3rm_ros.ros.bringup import node_class

    tmp = tmp_path_factory.mktemp("launchcfg")
    over = [Parameter("autostart", value=False), Parameter("data_root", value=str(tmp / "data")),
            Parameter("checkpoint_root", value=str(tmp / "ckpt")), Parameter("tasks_dir", value=str(tmp / "tasks"))]
    with rclpy.init():
        made = {}
        for exe in NODES:
            made[exe] = node_class(exe)(namespace="/t_launchcfg", parameter_overrides=over)
        yield made
        for n in made.values():
            n.destroy_node()


def declared(node) -> dict:
    from f3rm_ros.ros.paramfile import describe_node_parameters

    return {name: (value, d) for name, value, d in describe_node_parameters(node)}


def test_launch_files_parse_and_name_real_executables():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    installed = set(re.findall(r"scripts/nodes/(\w+)", cmake))
    assert LAUNCH, "no launch files"
    seen = set()
    for path in LAUNCH:
        compile(path.read_text(), str(path), "exec")
        entries = launch_nodes(path)
        dec, used = launch_arguments(path)
        print(f"{path.name}: {[(e['executable'], e['yamls'], sorted(e['inline'])) for e in entries]}; "
              f"args {sorted(dec)}")
        assert "generate_launch_description" in path.read_text()
        assert used <= dec, f"{path.name}: LaunchConfiguration without DeclareLaunchArgument: {used - dec}"
        for e in entries:
            if e["package"] != "f3rm_ros":
                continue
            seen.add(e["executable"])
            assert (ROOT / "scripts" / "nodes" / e["executable"]).is_file(), e["executable"]
            assert e["executable"] in installed, f"{e['executable']} is not installed by CMakeLists.txt"
            assert e["name"] == e["executable"], "node names are the executable names (REP 144)"
            assert e["lifecycle"] == (e["executable"] in ("train_node", "query_node")), e["executable"]
            for y in e["yamls"]:
                assert (CONFIG / y).is_file(), f"{path.name}: missing config/{y}"
    assert seen == set(NODES), seen


def test_every_configured_parameter_is_declared(nodes):
    """config/*.yaml, launch inline dicts and bringup overrides set only parameters the nodes declare, with
    values of the declared type."""
    from f3rm_ros.ros.bringup import load_bringup
    from f3rm_ros.ros.paramfile import node_key_matches, read_param_file

    checked = 0
    for f in sorted(CONFIG.glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        if not any(isinstance(v, dict) and "ros__parameters" in v for v in (data or {}).values()):
            continue
        for key, params in read_param_file(f).items():
            matched = [exe for exe, n in nodes.items() if node_key_matches(key, f"/f3rm/{exe}")]
            assert matched, f"{f.name}: key {key!r} matches no f3rm node"
            for exe in matched:
                dec = declared(nodes[exe])
                unknown = sorted(set(params) - set(dec))
                assert not unknown, f"{f.name}: {exe} does not declare {unknown}"
                for name, value in params.items():
                    _check_type(f"{f.name}:{name}", dec[name][0], value)
                checked += len(params)
                print(f"{f.name} [{key}] -> {exe}: {len(params)} parameters, all declared")
    for path in LAUNCH:
        for e in launch_nodes(path):
            if e["executable"] in nodes:
                dec = declared(nodes[e["executable"]])
                unknown = sorted(set(e["inline"]) - set(dec))
                assert not unknown, f"{path.name}: {e['executable']} does not declare {unknown}"
                checked += len(e["inline"])
    for f in sorted(CONFIG.glob("bringup_*.yaml")):
        b = load_bringup(f)
        for spec in b.nodes:
            dec = declared(nodes[spec.executable])
            assert not sorted(set(spec.overrides) - set(dec)), f"{f.name}: {spec.executable} overrides undeclared"
            for name, value in spec.overrides.items():
                _check_type(f"{f.name}:{name}", dec[name][0], value)
            checked += len(spec.overrides)
        print(f"{f.name}: nodes {[s.executable for s in b.nodes]}")
    print(f"{checked} configured parameter values checked")
    assert checked > 50


def _check_type(where, declared_value, value):
    if hasattr(declared_value, "tolist"):
        declared_value = declared_value.tolist()
    if isinstance(declared_value, bool):
        assert isinstance(value, bool), f"{where}: expected a bool, got {value!r}"
    elif isinstance(declared_value, int):
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an integer, got {value!r}"
    elif isinstance(declared_value, float):
        assert isinstance(value, float), f"{where}: expected a double (write it with a '.'), got {value!r}"
    elif isinstance(declared_value, str):
        assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
    elif isinstance(declared_value, list):
        assert isinstance(value, list), f"{where}: expected a list, got {value!r}"


def test_every_declared_parameter_is_documented(nodes):
    """Descriptions everywhere; query_node.yaml lists every query_node parameter (generated from the code)."""
    from f3rm_ros.ros.paramfile import read_param_file

    for exe, node in nodes.items():
        dec = declared(node)
        missing = [n for n, (_, d) in dec.items() if not d.description.strip()]
        assert not missing, f"{exe}: parameters without a description: {missing}"
        print(f"{exe}: {len(dec)} parameters, all described")
    q = declared(nodes["query_node"])
    listed = set(read_param_file(CONFIG / "query_node.yaml")["/**/query_node"])
    text = (CONFIG / "query_node.yaml").read_text()
    commented = set(re.findall(r"#\s+([\w.]+): \[\]", text))  # empty lists are documented as comments
    missing = sorted(set(q) - listed - commented)
    assert not missing, f"config/query_node.yaml lacks {missing}: regenerate it with `f3rm-ros params query_node`"
    stale = sorted(listed - set(q))
    assert not stale, f"config/query_node.yaml sets undeclared {stale}"


def test_remapped_topics_are_used_by_the_nodes(nodes):
    for path in LAUNCH:
        for e in launch_nodes(path):
            if not e["remaps"]:
                continue
            node = nodes[e["executable"]]
            used = {s.topic_name for s in node.subscriptions} | {p.topic_name for p in node.publishers}
            for src in e["remaps"]:
                full = node.resolve_topic_name(src)
                print(f"{path.name}: {e['executable']} remaps {src} ({full})")
                assert full in used, f"{path.name}: {e['executable']} does not use {full}; it uses {sorted(used)}"


def test_bringup_files_and_rviz_config(nodes):
    from f3rm_ros.ros.bringup import load_bringup, ros_arguments

    sim = load_bringup(CONFIG / "bringup_sim.yaml")
    robot = load_bringup(CONFIG / "bringup_robot.yaml")
    assert [s.executable for s in sim.nodes] == ["sim_camera_node", "capture_node", "train_node", "query_node"]
    assert [s.executable for s in robot.nodes] == ["capture_node", "train_node", "query_node"]
    args = ros_arguments(robot, Path("/tmp"))
    print("bringup_robot ros args:", " ".join(args))
    assert "capture_node:camera/image_raw:=/camera/color/image_raw" in args
    # the robot launch file and bringup file agree on the camera topics
    launch = next(p for p in LAUNCH if p.name == "robot.launch.py").read_text()
    for src, dst in robot.nodes[0].remappings.items():
        assert f'"{dst}"' in launch, f"robot.launch.py default for {src} differs from bringup_robot.yaml ({dst})"

    rviz = yaml.safe_load((CONFIG / "f3rm.rviz").read_text())
    vm = rviz["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "world"
    topics = {d["Topic"]["Value"]: d for d in vm["Displays"] if isinstance(d.get("Topic"), dict)}
    q = nodes["query_node"]
    q.trigger_configure()  # its publishers exist from configure on
    pubs = {p.topic_name.replace("/t_launchcfg/", "/f3rm/") for p in q.publishers}
    print("rviz topics:", sorted(topics), "query node publishes:", sorted(pubs))
    for t in ("/f3rm/query_node/scene_cloud", "/f3rm/query_node/heatmap", "/f3rm/query_node/grasp_markers"):
        assert t in topics and t in pubs, t
        assert topics[t]["Topic"]["Durability Policy"] == "Transient Local"


def test_sim_files_use_the_synthetic_training_preset():
    """bringup_sim.yaml and sim.launch.py give the train node the "synthetic" preset's settings exactly, and the
    simulated camera's depth reaches the capture node."""
    from f3rm_ros.core.presets import trainer_preset
    from f3rm_ros.ros.bringup import load_bringup

    want = trainer_preset("synthetic", prefix="trainer.")
    sim = load_bringup(CONFIG / "bringup_sim.yaml")
    train = next(s for s in sim.nodes if s.executable == "train_node")
    inline = train.overrides
    print("bringup_sim train_node inline:", inline)
    assert {k: inline.get(k) for k in want} == want
    depth = {s.executable: s.overrides.get("depth_topic") for s in sim.nodes}
    assert depth["sim_camera_node"] and depth["capture_node"] == depth["sim_camera_node"], depth
    launch = next(p for p in LAUNCH if p.name == "sim.launch.py")
    entry = next(e for e in launch_nodes(launch) if e["executable"] == "train_node")
    inline = entry["inline"]
    print("sim.launch.py train_node inline:", inline)
    assert {k: inline.get(k) for k in want} == want
