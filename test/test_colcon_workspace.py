"""A robot-style build: plain `colcon build` in a workspace whose src/ holds a clone of this repo.

It must find the one package (f3rm_ros), generate the interfaces, and install the hand-written
Python package and the node executables beside them, so that `ros2 run f3rm_ros <node>` and
`from f3rm_ros.msg import Grasp` both work from the install tree alone.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    if shutil.which("colcon") is None:
        pytest.skip("colcon is not installed: run scripts/setup.sh first")
    ws = tmp_path_factory.mktemp("ws")
    src = ws / "src" / "f3rm_ros"
    src.parent.mkdir()
    # the working tree as committed or not (tracked + untracked, minus ignored build outputs)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    r = subprocess.run(["colcon", "build", "--event-handlers", "console_direct-",
                        "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
                       cwd=ws, capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return ws, r.stdout


def test_plain_colcon_build_finds_and_builds_the_package(workspace):
    ws, out = workspace
    assert "Finished <<< f3rm_ros" in out and "1 package finished" in out
    share = ws / "install" / "f3rm_ros" / "share" / "f3rm_ros"
    assert (share / "package.xml").is_file()
    for d in ("launch", "config"):
        assert (share / d).is_dir() == any((ROOT / d).iterdir()), f"share/f3rm_ros/{d} not installed"
    for node in ("capture_node", "train_node", "query_node", "sim_camera_node", "camera_relay_node"):
        exe = ws / "install" / "f3rm_ros" / "lib" / "f3rm_ros" / node
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} not installed"


def test_install_tree_alone_provides_interfaces_and_the_python_package(workspace):
    ws, _ = workspace
    site = next((ws / "install" / "f3rm_ros" / "lib").glob("python3*/site-packages"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                       if p and Path(p).resolve() != ROOT])
    code = ("import f3rm_ros.core.config as c, f3rm_ros.ros.selftest as s\n"
            "from f3rm_ros.msg import Grasp\nfrom f3rm_ros.srv import QueryGrasps\n"
            "from f3rm_ros.action import TrainFields\n"
            "print(c.__file__); print(s.__file__)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split():
        assert line.startswith(str(site)), f"{line} was not imported from the install tree"
