"""The counting parts of benchmarks/bound_step.py against hand counts (CPU, seconds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bound_step.py"


@pytest.fixture(scope="module")
def bs():
    spec = importlib.util.spec_from_file_location("bound_step", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_adam_bytes_match_a_hand_count(bs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2, bias=False))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 3)).square().sum().backward()
    opt.step()
    n = 3 * 4 + 4 + 4 * 2  # 24 parameters
    # fp32: read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq = 7 x 4 bytes
    r = bs.adam_traffic(model.named_parameters(), opt)
    assert r["params"] == n and r["bytes"] == 28 * n
    assert set(r["groups"]) == {"0", "2"}  # "0.weight" -> group "0"
    assert r["groups"]["0"]["numel"] == 16 and r["groups"]["0"]["state_dtypes"] == ["float32", "float32"]
    # only the parameters that get a gradient this step move
    r2 = bs.adam_traffic(model.named_parameters(), opt, with_grad={"2.weight"})
    assert r2["params"] == 8 and r2["bytes"] == 28 * 8


def test_param_group_names(bs):
    assert bs.param_group_name("rgb_field.geo_mlp.0.weight") == "rgb_field.geo_mlp"
    assert bs.param_group_name("proposal_nets.1.grid.table") == "proposal_nets.1.grid"
    assert bs.param_group_name("feature_field.head.bias") == "feature_field.head"


def test_grid_bytes_match_a_hand_count(bs):
    # 10 points, levels at R = 2 (dense: 27 rows <= 64) and R = 8 (hashed: 729 > 64), T = 64 rows of F = 2, fp32
    b = bs.grid_call_bytes(10, [2, 8], 64, 2, 4, 4, backward=True)
    corner = 10 * 2 * 8 * 2  # points x levels x 8 corners x F
    assert b["gather"] == corner * 4 and b["scatter"] == corner * 4 and b["points_grad"] == 0
    # points in twice, encodings out, upstream gradient in, the [2, 64, 2] fp32 gradient table zero-filled
    assert b["stream"] == 2 * (10 * 3 * 4) + 2 * (10 * 2 * 2 * 4) + 2 * 64 * 2 * 4
    rows = min(64, 27, 80) + min(64, 729, 80)  # = 27 + 64
    assert b["floor_rows"] == rows * 2 * 4 + rows * 2 * 4
    fwd = bs.grid_call_bytes(10, [2, 8], 64, 2, 4, 2, backward=False, points_grad=True)
    assert fwd["scatter"] == 0 and fwd["points_grad"] == corner * 4
    assert fwd["stream"] == 10 * 3 * 4 + 10 * 2 * 2 * 2


def test_gemm_flops_of_a_linear_layer_forward_and_backward(bs):
    lin = torch.nn.Linear(3, 4)
    x = torch.randn(5, 3, requires_grad=True)
    with bs.OpCounter() as oc:
        lin(x).sum().backward()
    # forward x[5,3] W^T[3,4]: 2*5*3*4; backward dX = dY[5,4] W[4,3] and dW = dY^T[4,5] X[5,3]: the same each
    assert sum(g["flops"] for g in oc.gemms) == 3 * 2 * 5 * 3 * 4
    assert oc.gemm_summary()["float32"]["count"] == 3 and not oc.errors
    # an in-place op reads and writes its tensor; a view moves nothing
    a = torch.ones(100)
    with bs.OpCounter() as oc:
        a.mul_(2.0)
        a.view(10, 10)
    assert oc.read == 400 and oc.written == 400 and oc.ops == 1


def test_kernel_categories(bs):
    names = {
        "hash_fwd": "hash_fwd", "hash_bwd": "hash_bwd", "hash_bwd_points": "hash_bwd_x",
        "adam": "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
                "FusedOptimizerTensorListMetadata<4>, at::native::",
        "grad_scaler": "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous "
                       "namespace)::TensorListMetadata<1>, at::native::(anonymous namespace)::UnaryOpFunctor<float, 1, "
                       "1, 0>, at::native::_amp_foreach_non_finite_check_and_unscale_cuda_(c10::ArrayRef<at::Tensor>, "
                       "at::Tensor&, at::Tensor const&)::{lambda()#1}::operator()() const::{lambda()#2}",
        "gemm": "nvjet_sm90_hsh_64x512_64x2_1x2_h_bz_coopB_bias_TNT",
        "sort_scan_search": "void at::native::radixSortKVInPlace<2, -1, 32, 4, float, long, unsigned int>(at::cuda",
        "copy_cast": "void at::native::vectorized_elementwise_kernel<8, at::native::float16_copy_kernel_cuda(at::Tens",
        "fill": "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*",
        "reduction": "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<c10::Half, at::native::func_wrap",
        "gather_scatter": "void at::native::_scatter_gather_elementwise_kernel<128, 8, at::native::_cuda_scatter_g",
        "elementwise": "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, std::a",
    }
    for cat, name in names.items():
        assert bs.categorize(name) == cat, name
    assert bs.categorize("cutlass::Kernel2<cutlass_80_tensorop_f16_s16816gemm_f16_64x256_32x4_nn_align2>") == "gemm"
    assert bs.categorize("something_new") == "other"


def test_union_of_intervals(bs):
    assert bs.union_us([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert bs.union_us([]) == 0.0


def test_backward_kernels_go_to_the_phase_of_their_forward_op(bs):
    from torch.profiler import ProfilerActivity, profile

    lin = torch.nn.Linear(8, 8)
    x = torch.randn(64, 8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function(bs.LABEL + "a"):
            h = lin(x)
        with torch.profiler.record_function(bs.LABEL + "b"):
            y = (h.sin() * 3.0).sum()
        with torch.profiler.record_function(bs.LABEL + "backward"):
            y.backward()
    r = bs.phase_breakdown(prof, torch.device("cpu"), 1)["phases"]
    assert {"a", "b", "bwd:a", "bwd:b"} <= set(r), r.keys()
    assert "gemm" in r["bwd:a"]["categories_us_per_step"]  # the weight gradient of the linear layer
    assert "gemm" not in r["bwd:b"]["categories_us_per_step"]
