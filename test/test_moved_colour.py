"""The moved things' own colour (issue 18, ``fields.moved_colour``): the grid's grid_sample against the plain
trilinear interpolation (outputs and gradients), a zero grid changing nothing, the residual only on the samples its
edit moved, the oldest moving edit found through a stack, and a state dict's grids made again on load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f3rm_ros.core.edits import BoxRegion, EditWarp, SceneEdit
from f3rm_ros.core.fields.moved_colour import MovedColour, trilinear_reference


def _grid(seed: int = 0) -> MovedColour:
    torch.manual_seed(seed)
    mc = MovedColour()
    g = mc.add(3, torch.tensor([-0.2, -0.1, 0.0]), torch.tensor([0.3, 0.2, 0.25]), 0.05, gain=2.0)
    with torch.no_grad():
        g.value.normal_()
    return mc


def test_grid_sample_is_the_plain_trilinear_interpolation_outputs_and_gradients():
    mc = _grid()
    g = mc.grids["3"]
    assert tuple(g.value.shape) == (1, 3, 6, 7, 11)  # z, y, x nodes at 5 cm over 0.25 x 0.3 x 0.5
    p = torch.rand(500, 3) * torch.tensor([0.7, 0.5, 0.45]) + torch.tensor([-0.3, -0.15, -0.05])  # some outside
    w = torch.randn(500, 3)
    (g(p) * w).sum().backward()
    fast, grad = g(p).detach(), g.value.grad.clone()
    g.value.grad = None
    ref = 2.0 * trilinear_reference(g.value, g.box, p)
    (ref * w).sum().backward()
    assert torch.allclose(fast, ref.detach(), atol=1e-5)
    assert torch.allclose(grad, g.value.grad, atol=1e-4)
    # a node reads its own value; far outside reads nothing
    node = g.box[0] + torch.tensor([2, 3, 1]) * (g.box[1] - g.box[0]) / torch.tensor([10, 6, 5])
    assert torch.allclose(g(node[None])[0], 2.0 * g.value[0, :, 1, 3, 2], atol=1e-5)
    assert torch.equal(g(torch.tensor([[5.0, 5.0, 5.0]])), torch.zeros(1, 3))


def test_the_residual_changes_only_the_samples_its_edit_moved():
    mc = _grid()
    rgb = torch.rand(4, 5, 3) * 0.98 + 0.01
    pos = torch.rand(4, 5, 3) * 0.2
    mover = torch.full((4, 5), -1)
    mover[1] = 3
    mover[2] = 7  # an edit without a grid: its residual is 0
    out = mc.apply(rgb, pos, mover)
    assert torch.equal(out[0], rgb[0]) and torch.equal(out[3], rgb[3])
    assert torch.allclose(out[2], rgb[2], atol=1e-5)
    want = torch.sigmoid(torch.logit(rgb[1]) + mc.grids["3"](pos[1]))
    assert torch.allclose(out[1], want, atol=1e-5) and not torch.allclose(out[1], rgb[1], atol=1e-3)
    # a new gain keeps the residual; a fresh grid is zero: the colour as it was
    before = mc.residual(pos, mover)
    mc.set_gain(0.5)
    assert torch.allclose(mc.residual(pos, mover), before, atol=1e-5)
    fresh = MovedColour()
    fresh.add(3, torch.zeros(3), torch.ones(3), 0.1, gain=1.0)
    assert torch.equal(fresh.apply(rgb, pos, mover)[1], torch.sigmoid(torch.logit(rgb[1].clamp(1e-5, 1 - 1e-5))))


def test_bad_boxes_are_refused():
    with pytest.raises(ValueError, match="hi > lo"):
        MovedColour().add(0, torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), 0.1, 1.0)
    with pytest.raises(ValueError, match="voxel > 0"):
        MovedColour().add(0, torch.zeros(3), torch.ones(3), 0.0, 1.0)


def test_the_oldest_moving_edit_of_each_point():
    """Edit 0 moves a cup +x, edit 1 moves it again (+y), edit 2 moves a box: the cup's points at its last place are
    read from edit 0's region and belong to edit 0; the box's to edit 2; the rest to none."""
    def shift(x, y):
        T = np.eye(4)
        T[:2, 3] = x, y
        return T

    cup = BoxRegion.from_bounds((0.0, 0.0, 0.0), (0.1, 0.1, 0.1))
    cup1 = BoxRegion.from_bounds((0.3, 0.0, 0.0), (0.4, 0.1, 0.1))
    box = BoxRegion.from_bounds((-0.5, -0.5, 0.0), (-0.3, -0.3, 0.1))
    edits = [SceneEdit(cup, shift(0.3, 0.0), "cup"), SceneEdit(cup1, shift(0.0, 0.4), "cup"),
             SceneEdit(box, shift(0.0, -0.3), "box")]
    x = torch.tensor([[0.35, 0.45, 0.05],   # the cup now
                      [-0.4, -0.7, 0.05],   # the box now
                      [0.35, 0.05, 0.05],   # the cup's place after edit 0: empty now
                      [0.8, 0.8, 0.05]])    # nothing moved
    read, _, empty, who = EditWarp(edits)(x, mover=True)
    assert who.tolist() == [0, 2, -1, -1]
    assert torch.allclose(read[0], torch.tensor([0.05, 0.05, 0.05])) and empty.tolist() == [False, False, True, False]
    plain = EditWarp(edits)(x)
    assert len(plain) == 3 and torch.equal(plain[0], read)
    # only the first edit in force (a frame taken after it): the cup at its first new place, edit 0's
    _, _, _, who1 = EditWarp(edits)(x, active=torch.ones(4, dtype=torch.long), mover=True)
    assert who1.tolist() == [-1, -1, 0, -1]


def test_a_model_state_with_grids_loads_them_and_one_without_drops_them():
    from f3rm_ros.core.fields.model import FieldModel, FieldModelConfig
    from f3rm_ros.core.fields.rgb_field import RGBFieldConfig
    from f3rm_ros.core.hashgrid import HashGridConfig

    small = HashGridConfig(num_levels=2, features_per_level=2, log2_hashmap_size=8, base_res=4, max_res=8)
    cfg = FieldModelConfig(rgb=RGBFieldConfig(grid=small))
    a = FieldModel(cfg, 2, 0)
    plain = {k: v.clone() for k, v in a.state_dict().items()}
    a.moved_colour = _grid()
    state = a.state_dict()
    assert any(k.startswith("moved_colour.grids.3.") for k in state)
    b = FieldModel(cfg, 2, 0)
    b.load_state_dict(state)
    assert b.moved_colour is not None and list(b.moved_colour.grids) == ["3"]
    assert torch.equal(b.moved_colour.grids["3"].value, a.moved_colour.grids["3"].value)
    assert float(b.moved_colour.grids["3"].gain) == 2.0
    b.load_state_dict(plain)
    assert b.moved_colour is None and not any(k.startswith("moved_colour") for k in b.state_dict())


def test_a_floor_fill_has_its_own_grid_over_the_patch_it_reads():
    """The points of an old place's floor read from a fill are marked -(k + 2) (an older edit moving them wins: the
    moved thing's key); ``moved_colour_grids`` gives each fill a grid over the patch it reads (key -(k + 2)), whose
    residual changes those samples' colour alone; the plain and the CPU subset warps agree."""
    from f3rm_ros.core.edits import FloorFill, VoxelRegion
    from f3rm_ros.core.fields.model import FieldModel, FieldModelConfig
    from f3rm_ros.core.workflows.refresh import moved_colour_grids

    occ = np.zeros((10, 10, 10), bool)
    occ[2:8, 2:8, 1:9] = True
    region = VoxelRegion((0.0, 0.0, 0.0), 0.01, occ)  # a thing over x, y in 0.02 .. 0.08, z 0.01 .. 0.09
    T = np.eye(4)
    T[:2, 3] = 0.3, 0.0
    fill = FloorFill(np.array([0.0, 0.15, 0.0]), -0.01, 0.01)
    edits = [SceneEdit(region, T, "cup", fill=fill)]
    x = torch.tensor([[0.05, 0.05, 0.0],    # the old place's floor: read from the fill
                      [0.35, 0.05, 0.05],   # the cup at its new place
                      [0.05, 0.05, 0.05],   # the old place above the floor: empty
                      [0.8, 0.8, 0.0]])     # the floor elsewhere
    read, _, empty, who = EditWarp(edits).warp_all(x, mover=True)
    assert who.tolist() == [-2, 0, -1, -1] and empty.tolist() == [False, False, True, False]
    assert torch.allclose(read[0], torch.tensor([0.05, 0.2, 0.0]))
    many = torch.cat([x, torch.rand(4000, 3) * 0.4 - 0.05])
    a, b = EditWarp(edits)(many, mover=True), EditWarp(edits).warp_all(many, mover=True)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True) if u is not None)  # directions: none given
    model = FieldModel(FieldModelConfig(), num_images=1)
    mc = moved_colour_grids(model, edits, np.eye(4), 0.0, 1.0, "cpu", fill_voxel_m=0.01)
    assert list(mc.grids) == ["-2"]
    g = mc.grids["-2"]
    assert bool(((read[0] >= g.box[0]) & (read[0] <= g.box[1])).all())
    with torch.no_grad():
        g.value.fill_(1.0)
    rgb = torch.full((4, 3), 0.5)
    out = mc.apply(rgb, read, who)
    assert torch.equal(out[1:], rgb[1:]) and bool((out[0] > 0.6).all())
    # the moved cup's samples (edit 0 has no grid here) keep the field's colour bit for bit, even where a logit
    # round trip would not (colours at 0 and 1)
    rgb = torch.tensor([[0.5] * 3, [0.0, 1.0, 1e-7], [0.5] * 3, [1.0, 0.0, 0.3]])
    for out in (mc.apply(rgb, read, who), mc.apply(rgb.to(torch.float64), read, who)):
        assert torch.equal(out[1:], rgb[1:].to(out.dtype))


def test_the_cpu_residual_of_the_moved_samples_alone_is_the_plain_one_outputs_and_gradients():
    """On the CPU only the samples some edit moved or filled are sampled: the same residuals and the same gradients
    (grid values and positions) as every grid at every sample; no moved sample gives zeros."""
    torch.manual_seed(1)
    mc = MovedColour()
    for k in (0, 2, -3):
        g = mc.add(k, torch.tensor([-0.2, -0.1, 0.0]), torch.tensor([0.3, 0.2, 0.25]), 0.05, gain=1.5)
        with torch.no_grad():
            g.value.normal_()
    pos = (torch.rand(64, 9, 3) * torch.tensor([0.6, 0.4, 0.3]) - torch.tensor([0.25, 0.15, 0.02])).requires_grad_()
    mover = torch.tensor([-1, -1, -1, 0, 2, -3, 5])[torch.randint(7, (64, 9))]
    w = torch.randn(64, 9, 3)
    outs, grads = [], []
    for fn in (mc.residual, mc.residual_all):
        for g in mc.grids.values():
            g.value.grad = None
        pos.grad = None
        r = fn(pos, mover)
        (r * w).sum().backward()
        outs.append(r.detach())
        grads.append([pos.grad.clone(), *[g.value.grad.clone() for g in mc.grids.values()]])
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and bool(outs[0].abs().sum() > 0)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0], grads[1], strict=True))
    assert torch.equal(mc.residual(pos, torch.full((64, 9), -1)), torch.zeros(64, 9, 3))
    # apply: the CPU's subset against the plain path (apply_all, what runs off the CPU) and the plain expression,
    # outputs and gradients (colour, positions, grids); samples of no edit with a grid (-1, 5) keep rgb bit for bit
    rgb = (torch.rand(64, 9, 3) * 0.98 + 0.01).requires_grad_()
    outs, grads = [], []
    for way in ("apply", "apply_all", "expression"):
        for t in (rgb, pos, *[g.value for g in mc.grids.values()]):
            t.grad = None
        if way == "expression":
            c = torch.sigmoid(torch.logit(rgb.clamp(1e-5, 1 - 1e-5)) + mc.residual_all(pos, mover))
            out = torch.where(((mover != -1) & (mover != 5))[..., None], c, rgb)
        else:
            out = getattr(mc, way)(rgb, pos, mover)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append([rgb.grad.clone(), pos.grad.clone(), *[g.value.grad.clone() for g in mc.grids.values()]])
        kept = (mover == -1) | (mover == 5)
        assert torch.equal(out.detach()[kept], rgb.detach()[kept]), way
    for k in (1, 2):
        assert torch.allclose(outs[0], outs[k], atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0], grads[k], strict=True))
