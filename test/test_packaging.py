"""Packaging checks: layout, interface definitions, entry points, the ROS-free core."""

import ast
import configparser
import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERFACES = sorted([*ROOT.glob("msg/*.msg"), *ROOT.glob("srv/*.srv"), *ROOT.glob("action/*.action")])


def test_layout_follows_the_design_card():
    for name in ("f3rm_ros", "launch", "msg", "srv", "action", "config", "test", "package.xml", "setup.py",
                 "CMakeLists.txt", "README.md", "scripts/setup.sh", ".ci/run"):
        assert (ROOT / name).exists(), f"{name} is missing"


def test_every_interface_is_generated_and_every_field_is_commented():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert len(INTERFACES) >= 8
    for path in INTERFACES:
        rel = path.relative_to(ROOT).as_posix()
        assert f'"{rel}"' in cmake, f"{rel} is not listed in rosidl_generate_interfaces"
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#") or s == "---":
                continue
            assert "#" in s, f"{rel}:{lineno}: field without a comment: {s!r}"


def test_package_xml_is_valid_and_matches_setup_py():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / "package.xml"))
    assert pkg.name == "f3rm_ros"
    assert pkg.get_build_type() == "ament_cmake"
    setup_src = (ROOT / "setup.py").read_text()
    version = re.search(r'version="([^"]+)"', setup_src).group(1)
    assert pkg.version == version, "package.xml and setup.py disagree on the version"
    import f3rm_ros

    assert f3rm_ros.__version__ == version


def test_console_scripts_and_node_executables_resolve():
    setup_src = (ROOT / "setup.py").read_text()
    for target in re.findall(r'^\s*"[\w-]+ = ([\w.]+):(\w+)"', setup_src, flags=re.M):
        module = importlib.import_module(target[0])
        assert callable(getattr(module, target[1])), target
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for script in re.findall(r"scripts/nodes/(\w+)", cmake):
        path = ROOT / "scripts" / "nodes" / script
        assert path.is_file() and path.stat().st_mode & 0o111, f"{path} missing or not executable"
        tree = ast.parse(path.read_text())
        mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert mods == [f"f3rm_ros.ros.{script}"], mods


def test_core_never_imports_ros():
    """The core library must run where rclpy and the generated interfaces are absent."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import f3rm_ros.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'f3rm_ros.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('rclpy', 'rosidl_runtime_py')\n"
        "             or k.startswith(('f3rm_ros.msg', 'f3rm_ros.srv', 'f3rm_ros.action', 'f3rm_ros.ros')))\n"
        "print('imported ROS modules:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^\s*(bash scripts/setup\.sh[^\n]*)$", readme, flags=re.M)
    test_cmds = [c.split("#")[0].strip() for c in commands if "--test" in c]
    assert len(test_cmds) == 1, f"README should hold one test command, found {test_cmds}"
    assert f"exec {test_cmds[0]}" in ci


def test_pytest_config_collects_the_test_folder():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "pytest.ini")
    assert cfg["pytest"]["testpaths"].split() == ["test"]
