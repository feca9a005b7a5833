"""The field contract of the grasp planner (``f3rm_ros.core.fields.protocol``): the trained field and the oracle
field satisfy it; an object that lacks part of it does not."""

from pathlib import Path

import numpy as np
import torch

from f3rm_ros.core.field_api import load_trained_field
from f3rm_ros.core.fields.protocol import FoldableField, FusedQueryField, GraspField
from f3rm_ros.core.grasp.oracle import OracleField
from f3rm_ros.core.sim.scene import resolve_scene

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "field_v1.ckpt"


class _DensityOnly:
    """Has everything but ``query_features``."""

    feature_dim = 0
    device = torch.device("cpu")
    extractor_info: dict = {}
    nerf_to_world = np.eye(4)

    def query_density(self, points_world):
        return torch.zeros(points_world.shape[0])


def test_trained_field_satisfies_the_protocols():
    f = load_trained_field(FIXTURE)
    checks = {p.__name__: isinstance(f, p) for p in (GraspField, FoldableField, FusedQueryField)}
    print("TrainedField:", checks)
    assert checks == {"GraspField": True, "FoldableField": True, "FusedQueryField": False}
    W, b = f.feature_head
    pts = torch.rand(5, 3)
    assert torch.allclose(f.query_feature_hidden(pts) @ W.T + b, f.query_features(pts), atol=1e-5)


def test_oracle_field_satisfies_the_protocols():
    scene = resolve_scene("mug_bowl_box")
    table, _ = scene.label_table()
    f = OracleField(scene, {int(k): np.eye(len(table) + 1)[int(k)] for k in table}, {"type": "test"},
                    resolution=0.02)
    checks = {p.__name__: isinstance(f, p) for p in (GraspField, FoldableField, FusedQueryField)}
    print("OracleField:", checks)
    assert checks == {"GraspField": True, "FoldableField": False, "FusedQueryField": True}


def test_an_incomplete_field_does_not():
    assert not isinstance(_DensityOnly(), GraspField)
    _DensityOnly.query_features = lambda self, p: torch.zeros(p.shape[0], 0)
    try:
        assert isinstance(_DensityOnly(), GraspField)
    finally:
        del _DensityOnly.query_features
