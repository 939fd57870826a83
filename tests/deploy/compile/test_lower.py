"""The lowering (nfedge.deploy.compile.lower): the inline schedule does what it claims, keeps the outputs, and a
schedule that fails is reported (GitHub issue #11: on TVM 0.27 it raised inside a bare `except` and every
fused operator of cnn-s was silently built unscheduled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from tvm.script import tirx as T

from nfedge.deploy.compile.lower import ScheduleWarning, apply_inline_schedule, inline_primfunc, lower_relax, relax_graphs
from nfedge.deploy.targets import load_target
from nfedge.models import create_base_model, create_generator
from nfedge.sram.image import build_image

INPUT_SHAPE = (1, 32, 32)


def _prim_funcs(mod) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.fixture(scope="module")
def lowered():
    """{graph: (PrimFuncs lowered with schedule "none", with "inline")} for cnn-s and two generators, lowered
    for the default bare-metal target (what `nfedge build` ships)."""
    torch.manual_seed(0)
    base = create_base_model("cnn-s", in_channels=1, num_classes=10).eval()
    image = build_image(base, 8)
    target = load_target("cortex-m55").tvm_target()
    graphs = {}
    for gen_name in ("ConvT", "UNetT"):
        mods = relax_graphs(INPUT_SHAPE, base, image, create_generator(gen_name, in_channels=1).eval())
        graphs.setdefault("cnn-s", mods["base"])
        graphs[gen_name] = mods["generator"]
    return {g: (_prim_funcs(lower_relax(m, target, "none")), _prim_funcs(lower_relax(m, target, "inline")))
            for g, m in graphs.items()}


def _n_blocks(func) -> int:
    """Top-level loop nests under the root block (an unscheduled PrimFunc has one block per nest)."""
    return len(func.body.block.body.seq) if hasattr(func.body.block.body, "seq") else 1


def test_inline_changes_every_primfunc_it_claims_to_schedule(lowered):
    for graph, (plain, inlined) in lowered.items():
        assert plain.keys() == inlined.keys()
        claimed = set()
        for name, f in plain.items():
            scheduled, steps = inline_primfunc(f)
            assert tvm_ffi.structural_equal(scheduled, inlined[name]), f"{graph} {name}: lower_relax differs"
            if steps:
                claimed.add(name)
                assert not tvm_ffi.structural_equal(f, inlined[name]), f"{graph} {name}: claims {steps}, unchanged"
            else:  # nothing claimed: only single-block operators (pooling, resize, reshape, concat) qualify
                assert _n_blocks(f) == 1, f"{graph} {name}: {_n_blocks(f)} blocks but nothing scheduled"
                assert tvm_ffi.structural_equal(f, inlined[name])
            if name.startswith(("fused_conv2d", "fused_matmul")):
                # the epilogue (BatchNorm, bias, ReLU, tanh, clip) runs per output element after its reduction
                assert any(s.startswith("reverse_compute_at") for s in steps), f"{graph} {name}: {steps}"
                # ... and no full-size intermediate is left but the padded input and the accumulator
                assert len(inlined[name].body.block.alloc_buffers) <= 3, f"{graph} {name}"
        fused = {n for n in plain if n.startswith("fused_")}
        assert fused <= claimed, f"{graph}: fused operators left unscheduled: {sorted(fused - claimed)}"
    # what issue #11 counted for cnn-s: 4 weight slices, 3 convs, the classifier matmul and the global mean
    assert len({n for n, f in lowered["cnn-s"][0].items() if inline_primfunc(f)[1]}) == 9


def _random_args(func, rng) -> list[np.ndarray]:
    """One array per buffer parameter: float32 ~ N(0, 1) (BatchNorm's variance too: a division by a small
    random number is still the same division on both sides), int8 weight codes uniform in [-128, 127]."""
    out = []
    for p in func.params:  # TVM 0.27: each parameter is a buffer Var with its shape and dtype
        shape, dtype = [int(d) for d in p.shape], str(p.dtype)
        if dtype == "float32":
            out.append(rng.standard_normal(shape).astype(np.float32))
        elif dtype == "int8":
            out.append(rng.integers(-128, 128, size=shape, dtype=np.int8))
        else:
            raise AssertionError(f"no random input for dtype {dtype}")
    return out


def _run_on_host(funcs: dict[str, tvm.tirx.PrimFunc], args: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Build all PrimFuncs in one host llvm module and run each; returns each function's output (its last
    parameter: FuseTIR puts the output buffer last)."""
    mod = tvm.IRModule({tvm.ir.GlobalVar(n): f.with_attr("global_symbol", n) for n, f in funcs.items()})
    rt = tvm.tirx.build(mod, target="llvm")
    outs = {}
    for n in funcs:
        tensors = [tvm.runtime.tensor(a.copy()) for a in args[n][:-1]]
        tensors.append(tvm.runtime.tensor(np.full_like(args[n][-1], np.nan)))  # unwritten elements show up
        rt[n](*tensors)
        outs[n] = tensors[-1].numpy()
    return outs


def test_inline_computes_the_same_outputs_as_unscheduled(lowered):
    rng = np.random.default_rng(0)
    for graph, (plain, inlined) in lowered.items():
        args = {n: _random_args(f, rng) for n, f in plain.items()}
        ref, got = _run_on_host(plain, args), _run_on_host(inlined, args)
        for n in plain:
            assert np.isfinite(ref[n]).all(), f"{graph} {n}: reference left elements unwritten"
            # bit for bit: the schedule moves loops, not arithmetic (same operations in the same order), and
            # the host llvm target (generic x86-64, no FMA) cannot contract a multiply-add differently
            np.testing.assert_array_equal(got[n], ref[n], err_msg=f"{graph} {n}")


def test_an_epilogue_over_a_larger_domain_keeps_its_border():
    """A reduction then a padding of its result (pooling then the next conv's zero border, fused into one
    PrimFunc): reverse_compute_at would regenerate only the consumer elements that read the reduction and
    leave the border unwritten, so the schedule must not move it there."""
    from tvm import te

    a = te.placeholder((4, 8), name="A")
    k = te.reduce_axis((0, 8), name="k")
    s = te.compute((4,), lambda i: te.sum(a[i, k], axis=k), name="S")
    p = te.compute((6,), lambda i: tvm.tirx.if_then_else(tvm.tirx.all(i >= 1, i < 5), s[i - 1],
                                                         tvm.tirx.const(0.0, "float32")), name="P")
    f = te.create_prim_func([a, p])
    scheduled, steps = inline_primfunc(f)
    assert not any(st.startswith("reverse_compute_at") for st in steps), steps
    args = {"sum_pad": _random_args(f, np.random.default_rng(1))}
    ref, got = _run_on_host({"sum_pad": f}, args), _run_on_host({"sum_pad": scheduled}, args)
    assert got["sum_pad"][0] == 0.0 and got["sum_pad"][5] == 0.0  # the border, NaN if left unwritten
    np.testing.assert_array_equal(got["sum_pad"], ref["sum_pad"])


@T.prim_func
def _blockless(A: T.Buffer((4,), "float32"), B: T.Buffer((4,), "float32")):
    # plain TIR without the block ("sblock") form: the schedule cannot even find its root block
    for i in range(4):
        B[i] = A[i] + T.float32(1.0)


def _module_with_blockless():
    return tvm.IRModule({tvm.ir.GlobalVar("my_plain_op"): _blockless})


def test_a_failing_schedule_warns_naming_the_function_and_keeps_it():
    mod = _module_with_blockless()
    with pytest.warns(ScheduleWarning, match=r"^inline schedule failed for my_plain_op: ScheduleError"):
        out = apply_inline_schedule(mod)
    assert tvm_ffi.structural_equal(out["my_plain_op"], _blockless)  # unscheduled, still correct


def test_a_failing_schedule_is_an_error_in_the_test_suite():
    """pyproject.toml's filterwarnings turns the warning into an error here, so a schedule that stops
    working fails every test that builds (tests/deploy/compile/test_build.py too), not just this file."""
    with pytest.raises(ScheduleWarning, match="my_plain_op"):
        apply_inline_schedule(_module_with_blockless())
