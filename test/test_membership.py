"""Which part of an edit's region moved (issue 18, ``fields.membership``): shares that start at the hard region (a
model renders bit for bit as without them), the weight of moved and vacated samples through an edit stack, the
straight-through clamp's gradient, the warp's moved bits and vacating edit, the state dict, and a query through an
EditedField whose grid says part of the region stayed behind."""

from __future__ import annotations

import numpy as np
import torch

from f3rm_ros.core.edits import BoxRegion, EditedField, EditWarp, SceneEdit
from f3rm_ros.core.fields.membership import Membership, straight_clamp


def _shift(x: float, y: float) -> np.ndarray:
    T = np.eye(4)
    T[:2, 3] = x, y
    return T


CUP = BoxRegion.from_bounds((0.0, 0.0, 0.0), (0.1, 0.1, 0.1))
CUP1 = BoxRegion.from_bounds((0.3, 0.0, 0.0), (0.4, 0.1, 0.1))
BOX = BoxRegion.from_bounds((-0.5, -0.5, 0.0), (-0.3, -0.3, 0.1))


def _stack() -> list[SceneEdit]:
    """Edit 0 moves a cup +x, edit 1 moves it again +y, edit 2 removes a box."""
    return [SceneEdit(CUP, _shift(0.3, 0.0), "cup"), SceneEdit(CUP1, _shift(0.0, 0.4), "cup"),
            SceneEdit(BOX, None, "box")]


def test_the_warp_gives_the_moved_bits_and_the_vacating_edit():
    x = torch.tensor([[0.35, 0.45, 0.05],   # the cup now: moved by edits 1 and 0
                      [0.05, 0.05, 0.05],   # the cup's first place: emptied by edit 0
                      [0.35, 0.05, 0.05],   # its second place: emptied by edit 1
                      [-0.4, -0.4, 0.05],   # the removed box
                      [0.8, 0.8, 0.05]])    # nothing
    read, _, empty, who, bits, vac = EditWarp(_stack())(x, parts=True)
    # the cup's second place holds what edit 0 brought there: moved by edit 0, vacated by edit 1
    assert bits.tolist() == [0b11, 0, 0b01, 0, 0]
    assert vac.tolist() == [-1, 0, 1, -2, -1]
    assert who.tolist() == [0, -1, 0, -1, -1]
    assert empty.tolist() == [False, True, True, True, False]
    plain = EditWarp(_stack())(x)  # the same, but an empty point is read where it is
    keep = torch.tensor([True, True, False, True, True])
    assert torch.equal(plain[0][keep], read[keep]) and torch.equal(plain[2], empty)
    assert torch.equal(plain[0][2], x[2])
    # the point at the cup's second place reads its first place through edit 0 (where its content lies)
    assert torch.allclose(read[2], torch.tensor([0.05, 0.05, 0.05]))


def test_a_point_emptied_by_two_edits_stays_empty():
    """A box leaves a place and a second edit's region, over the same place, leaves it too: emptied by both. A cup
    moved onto a place a box left and then away again was emptied once (the cup's content is there before)."""
    box = BoxRegion.from_bounds((0.3, 0.0, 0.0), (0.4, 0.1, 0.1))
    twice = [SceneEdit(box, _shift(0.0, -0.5), "box"), SceneEdit(CUP1, _shift(0.0, 0.4), "thing")]
    _, _, empty, _, _, vac = EditWarp(twice)(torch.tensor([[0.35, 0.05, 0.05]]), parts=True)
    assert bool(empty[0]) and int(vac[0]) == -2
    refilled = [SceneEdit(box, _shift(0.0, -0.5), "box"), SceneEdit(CUP, _shift(0.3, 0.0), "cup"),
                SceneEdit(CUP1, _shift(0.0, 0.4), "cup")]
    read, _, empty, _, bits, vac = EditWarp(refilled)(torch.tensor([[0.35, 0.05, 0.05]]), parts=True)
    assert bool(empty[0]) and int(vac[0]) == 2 and int(bits[0]) == 0b010
    assert torch.allclose(read[0], torch.tensor([0.05, 0.05, 0.05]))


def test_fresh_shares_are_the_hard_region_and_trained_ones_split_the_content():
    ms = Membership()
    g = ms.add(0, torch.zeros(3), torch.ones(3), 0.25, gain=1.0)
    p = torch.rand(6, 3)
    bits = torch.tensor([1, 0, 0, 0, 0b10, 1])
    vac = torch.tensor([-1, 0, -1, -2, 1, 0])
    # edit 1 has no grid: its moved bit counts 1, its vacated place stays empty
    assert ms.weight(p, bits, vac).tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    with torch.no_grad():
        g.value.fill_(-0.25)  # a quarter of the content stays behind
    w = ms.weight(p, bits, vac)
    assert torch.allclose(w, torch.tensor([0.75, 0.25, 1.0, 0.0, 0.0, 0.25 * 0.75]))
    with torch.no_grad():
        g.value.fill_(-3.0)  # past the bound: clamped
    assert torch.allclose(ms.weight(p, bits, vac), torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0]))


def test_the_straight_through_clamp_passes_the_gradient_at_and_past_its_bounds():
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.7], requires_grad=True)
    y = straight_clamp(x)
    assert torch.equal(y.detach(), x.detach().clamp(0, 1))
    (y * torch.arange(1.0, 6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(1.0, 6.0))
    # a fresh grid (share 1) gets a gradient from a vacated sample: the place can be given content back
    ms = Membership()
    g = ms.add(0, torch.zeros(3), torch.ones(3), 0.5, gain=1.0)
    ms.weight(torch.full((1, 3), 0.5), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)).sum() \
        .backward()
    assert float(g.value.grad.abs().sum()) > 0


def _model():
    from f3rm_ros.core.fields.model import FieldModel, FieldModelConfig
    from f3rm_ros.core.fields.rgb_field import RGBFieldConfig
    from f3rm_ros.core.hashgrid import HashGridConfig

    small = HashGridConfig(num_levels=2, features_per_level=2, log2_hashmap_size=8, base_res=4, max_res=8)
    torch.manual_seed(0)
    return FieldModel(FieldModelConfig(rgb=RGBFieldConfig(grid=small)), 2, 0)


def test_a_model_with_fresh_shares_renders_bit_for_bit_as_without_and_its_state_keeps_them():
    model = _model().eval()
    warp = EditWarp(_stack()[:2]).in_field(np.eye(4))
    torch.manual_seed(1)
    o = torch.rand(64, 3) * 0.2 - torch.tensor([0.0, 0.0, 0.5])
    d = torch.nn.functional.normalize(torch.rand(64, 3) + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    with torch.no_grad():
        before = model.render_rays(o, d, warp=warp)
        ms = Membership()
        for k, r in ((0, CUP), (1, CUP)):  # both edits read the cup's first place
            ms.add(k, torch.as_tensor(r.corners().min(0)), torch.as_tensor(r.corners().max(0)), 0.02, gain=2.0)
        model.membership = ms
        after = model.render_rays(o, d, warp=warp)
    for key in ("rgb", "depth", "accumulation", "weights"):
        assert torch.equal(before[key], after[key]), key
    state = model.state_dict()
    assert any(k.startswith("membership.grids.1.") for k in state)
    other = _model()
    other.load_state_dict(state)
    assert sorted(other.membership.grids) == ["0", "1"] and other.membership.grids["0"].value.shape[1] == 1
    other.load_state_dict({k: v for k, v in state.items() if not k.startswith("membership.")})
    assert other.membership is None


class _Blob:
    """A GraspField with a density of 10 everywhere and a model holding membership grids (world = field frame)."""

    feature_dim = 0
    device = torch.device("cpu")

    def __init__(self, ms: Membership):
        self.model = type("M", (), {"membership": ms})()

    def world_to_nerf(self, p: torch.Tensor) -> torch.Tensor:
        return p

    def query_density(self, p: torch.Tensor) -> torch.Tensor:
        return torch.full((p.shape[0],), 10.0)


def test_an_edited_field_reads_the_shares_part_of_the_region_back_at_its_old_place():
    """The cup's region took 3 cm of a neighbour (x < 0.03); a grid saying so gives that slab back to the old place
    and takes it from the new one; the rest moves as before."""
    ms = Membership()
    g = ms.add(0, torch.tensor([-0.05, -0.05, -0.05]), torch.tensor([0.15, 0.15, 0.15]), 0.01, gain=1.0)
    xs = torch.linspace(-0.05, 0.15, g.value.shape[-1])
    with torch.no_grad():
        g.value[0, 0] = torch.where(xs < 0.025, -1.0, 0.0).expand_as(g.value[0, 0])
    field = EditedField(_Blob(ms), [SceneEdit(CUP, _shift(0.3, 0.0), "cup")], fixed=1)
    old = torch.tensor([[0.01, 0.05, 0.05], [0.07, 0.05, 0.05]])
    new = old + torch.tensor([0.3, 0.0, 0.0])
    assert field.query_density(old).tolist() == [10.0, 0.0]
    assert field.query_density(new).tolist() == [0.0, 10.0]
    plain = EditedField(_Blob(Membership()), [SceneEdit(CUP, _shift(0.3, 0.0), "cup")])
    assert plain.query_density(old).tolist() == [0.0, 0.0] and plain.query_density(new).tolist() == [10.0, 10.0]
