"""The static arena of nfedge.deploy.compile.codegen: assign_arena_offsets (first fit over liveness, plain data)
by property-based tests, the liveness a graph's calls give (arena_lifetimes), and on a real small build that the
layouts, the bundle manifest and the arena model.c declares all agree."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfedge.deploy.compile import link
from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.deploy.compile.codegen import ALIGN, ArenaTensor, Lifetime, arena_lifetimes, assign_arena_offsets
from nfedge.models import create_base_model, create_generator
from nfedge.sram.image import build_image

# no deadline: two shared cores make per-example timings noisy, and these functions are fast anyway
PROPERTY = settings(max_examples=300, deadline=None)


def _rounded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def arena_conflicts(buffers: list[Lifetime], offsets: list[int]) -> list[tuple[int, int]]:
    """Pairs of buffers that are live at a common step (closed [first, last] intervals: a buffer read at step s
    is still live when step s writes its output) and share at least one byte. Written independently of
    assign_arena_offsets so that the two can disagree."""
    bad = []
    for i, (a, oa) in enumerate(zip(buffers, offsets)):
        for j in range(i + 1, len(buffers)):
            b, ob = buffers[j], offsets[j]
            live_together = a.first <= b.last and b.first <= a.last
            share_bytes = a.nbytes > 0 and b.nbytes > 0 and oa < ob + b.nbytes and ob < oa + a.nbytes
            if live_together and share_bytes:
                bad.append((i, j))
    return bad


def check_arena(buffers: list[Lifetime], offsets: list[int], arena_bytes: int) -> None:
    """Everything an arena assignment promises (docstring of assign_arena_offsets)."""
    assert len(offsets) == len(buffers)
    assert arena_conflicts(buffers, offsets) == []
    assert all(o >= 0 and o % ALIGN == 0 for o in offsets)
    assert arena_bytes % ALIGN == 0
    assert arena_bytes == max((o + _rounded(b.nbytes) for b, o in zip(buffers, offsets)), default=0)
    # no assignment can beat the bytes live at once (aligned offsets + disjoint bytes = disjoint rounded ranges)
    steps = {s for b in buffers for s in (b.first, b.last)}
    peak = max((sum(_rounded(b.nbytes) for b in buffers if b.first <= s <= b.last) for s in steps), default=0)
    assert arena_bytes >= peak


lifetimes = st.lists(
    st.builds(lambda n, f, span: Lifetime(n, f, f + span),
              st.one_of(st.integers(0, 64), st.integers(0, 100_000)), st.integers(0, 30), st.integers(0, 12)),
    max_size=40)


@PROPERTY
@given(lifetimes)
def test_live_buffers_never_share_bytes(buffers):
    offsets, arena = assign_arena_offsets(buffers)
    check_arena(buffers, offsets, arena)


@PROPERTY
@given(lifetimes)
def test_assignment_does_not_depend_on_how_the_buffers_are_listed_within_a_step(buffers):
    # buffers are taken by first step; reversing the list changes only the order among equal first steps, so
    # the result stays valid (the layout of a real graph has one output per step and never depends on it)
    offsets, arena = assign_arena_offsets(buffers[::-1])
    check_arena(buffers[::-1], offsets, arena)


@st.composite
def call_graphs(draw):
    """(calls, tensors) like a laid-out graph's: call i writes tensor i (arena, the last one the graph output) and
    reads some earlier outputs, a graph input and a constant (neither of which lives in the arena)."""
    n = draw(st.integers(1, 25))
    tensors = {k: ArenaTensor(k, (draw(st.integers(0, 5000)),), "uint8", "output" if k == n - 1 else "arena")
               for k in range(n)}
    tensors[n] = ArenaTensor(n, (16,), "float32", "input")
    tensors[n + 1] = ArenaTensor(n + 1, (4,), "int8", "const")
    calls = []
    for i in range(n):
        reads = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=4)) if i else []
        reads += draw(st.lists(st.sampled_from([n, n + 1]), unique=True, max_size=2))
        calls.append((f"op{i}", [*reads, i]))
    return calls, tensors


@PROPERTY
@given(call_graphs())
def test_an_operator_never_overwrites_what_it_reads(graph):
    calls, tensors = graph
    lives = arena_lifetimes(calls, tensors)
    offsets, arena = assign_arena_offsets([life for _, life in lives])
    where = {key: (off, life.nbytes) for (key, life), off in zip(lives, offsets)}
    assert set(where) == {k for k, t in tensors.items() if t.kind == "arena"}
    for _, keys in calls:
        out = where.get(keys[-1])
        for a in keys[:-1]:
            if out and a in where and out[1] and where[a][1]:
                assert where[a][0] + where[a][1] <= out[0] or out[0] + out[1] <= where[a][0], (keys, where)
    # and liveness is what the calls say: written by its call, live up to its last reader
    for key, life in lives:
        readers = [s for s, (_, keys) in enumerate(calls) if key in keys[:-1]]
        assert (life.first, life.last) == (key, max(readers, default=key))
    check_arena([life for _, life in lives], offsets, arena)


def test_the_conflict_checker_finds_overlaps():
    """The checker can fail: two buffers live at step 1 at the same bytes, an output on top of the input its
    step reads, and a partial overlap; but reuse after the last read is allowed."""
    assert arena_conflicts([Lifetime(32, 0, 2), Lifetime(32, 1, 1)], [0, 0]) == [(0, 1)]
    assert arena_conflicts([Lifetime(16, 0, 1), Lifetime(16, 1, 2)], [0, 0]) == [(0, 1)]  # read at 1, written at 1
    assert arena_conflicts([Lifetime(40, 0, 1), Lifetime(16, 1, 1), Lifetime(8, 1, 1)], [0, 32, 48]) == [(0, 1)]
    assert arena_conflicts([Lifetime(16, 0, 1), Lifetime(16, 2, 3), Lifetime(0, 0, 3)], [0, 0, 0]) == []
    with pytest.raises(AssertionError):
        check_arena([Lifetime(16, 0, 1), Lifetime(16, 1, 2)], [0, 0], 16)


def test_first_fit_reuses_freed_bytes():
    # a chain a -> b -> c -> d: c takes a's bytes (a's last reader was step 1), d the bytes after c's
    chain = [Lifetime(100, 0, 1), Lifetime(20, 1, 2), Lifetime(5, 2, 3), Lifetime(17, 3, 3)]
    assert assign_arena_offsets(chain) == ([0, 112, 0, 16], 144)
    # a buffer fills the lowest gap that holds it (the one the second buffer left), not the end
    gap = [Lifetime(16, 0, 9), Lifetime(32, 1, 2), Lifetime(16, 2, 9), Lifetime(16, 3, 9)]
    assert assign_arena_offsets(gap) == ([0, 16, 48, 16], 64)
    assert assign_arena_offsets([]) == ([], 0)


@pytest.mark.parametrize("bad", [Lifetime(-1, 0, 0), Lifetime(16, 3, 2)])
def test_invalid_lifetimes_are_refused(bad):
    with pytest.raises(ValueError, match="invalid arena buffer"):
        assign_arena_offsets([bad])


# --------------------------------------------------------------------------------------- a real build

ARENA_DECL = re.compile(r"^static uint8_t nfedge_arena\[(\d+)\] __attribute__\(\(aligned\((\d+)\)\)\);$", re.M)
SHAPE_DECL = re.compile(r"^static const int64_t (\w+)\[\d+\] = \{([\d, ]*)\};$", re.M)
CALL = re.compile(r"^  \{ /\* (\w+) \*/\n(.*?)^  \}$", re.M | re.S)
TENSOR = re.compile(r"nfedge_tensor\(&a\[\d+\], (.*?), \d+, (\w+), \d+, (\d+)\);")


def arena_arguments(model_c: str) -> list[tuple[str, list[tuple[int, int, bool]]]]:
    """(operator, [(arena offset, bytes, is the output) of each of its arena arguments]) for every call model.c
    makes; a call's last argument is its output (codegen.GraphLayout.calls)."""
    shapes = {name: [int(d) for d in dims.split(",")] for name, dims in SHAPE_DECL.findall(model_c)}
    out = []
    for fname, body in CALL.findall(model_c):
        args = []
        tensors = TENSOR.findall(body)
        for i, (data, shape, bits) in enumerate(tensors):
            if m := re.fullmatch(r"\(void \*\)\(nfedge_arena \+ (\d+)\)", data):
                n = 1
                for d in shapes[shape]:
                    n *= d
                args.append((int(m[1]), n * int(bits) // 8, i == len(tensors) - 1))
        out.append((fname, args))
    return out


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    """A cnn-xs + ConvT bundle for cortex-m55, with the GraphLayouts the build itself made."""
    torch.manual_seed(0)
    m = create_base_model("cnn-xs", in_channels=1, num_classes=10).eval()
    g = create_generator("ConvT", in_channels=1).eval()
    # the very layouts the build wrote model.c from (a second lowering here could differ from the build's)
    layouts, original = [], link.layout_graph

    def capture(*args, **kwargs):
        layouts.append(original(*args, **kwargs))
        return layouts[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(link, "layout_graph", capture)
        b = build_for_target(BuildConfig(mode="weight-only", target="cortex-m55", bits=8), m, build_image(m, 8), g,
                             tmp_path_factory.mktemp("codegen") / "b")
    return b, {lay.name: lay for lay in layouts}


@pytest.mark.emulator  # links with the ARM toolchain
@pytest.mark.slow
def test_the_arena_model_c_declares_is_the_layouts(small_build):
    bundle, layouts = small_build
    assert set(layouts) == {"base", "generator"}
    sizes = bundle.manifest["sizes"]
    assert sizes["arena_bytes_by_graph"] == {name: lay.arena_bytes for name, lay in layouts.items()}
    assert sizes["arena_bytes"] == max(lay.arena_bytes for lay in layouts.values()) > 0
    model_c = (bundle.path / "model.c").read_text()
    decl = ARENA_DECL.findall(model_c)
    assert decl == [(str(max(sizes["arena_bytes"], ALIGN)), str(ALIGN))]


@pytest.mark.emulator
@pytest.mark.slow
def test_the_built_layouts_keep_live_tensors_apart(small_build):
    _, layouts = small_build
    for lay in layouts.values():
        # liveness recomputed from the calls themselves, not by arena_lifetimes
        first = {keys[-1]: s for s, (_, keys) in enumerate(lay.calls)}
        last = dict(first)
        for s, (_, keys) in enumerate(lay.calls):
            for k in keys[:-1]:
                last[k] = s
        arena = [t for t in lay.tensors.values() if t.kind == "arena"]
        assert arena and {t.key for t in arena} <= set(first)
        buffers = [Lifetime(t.nbytes, first[t.key], last[t.key]) for t in arena]
        check_arena(buffers, [t.offset for t in arena], lay.arena_bytes)


def model_c_arena_violations(model_c: str) -> list[str]:
    """Read from the C alone: arena arguments outside the declared arena or not ALIGN-aligned, a call's output
    sharing bytes with one of its inputs, or two of its inputs partly on top of each other."""
    size = int(ARENA_DECL.findall(model_c)[0][0])

    def apart(a, b) -> bool:
        return a[0] + a[1] <= b[0] or b[0] + b[1] <= a[0]

    bad = []
    for step, (fname, args) in enumerate(arena_arguments(model_c)):
        bad += [f"{step} {fname}: ({off}, {n}) outside the {size}-byte arena or unaligned"
                for off, n, _ in args if off % ALIGN or off + n > size]
        outs, ins = [a for a in args if a[2]], [a for a in args if not a[2]]
        bad += [f"{step} {fname}: output {o[:2]} on input {i[:2]}" for o in outs for i in ins if not apart(o, i)]
        # two inputs may be one tensor read twice, never two tensors partly on top of each other
        bad += [f"{step} {fname}: inputs {a[:2]} and {b[:2]} overlap" for j, a in enumerate(ins) for b in ins[j + 1:]
                if a[:2] != b[:2] and not apart(a, b)]
    return bad


@pytest.mark.emulator
@pytest.mark.slow
def test_model_c_calls_stay_inside_the_arena_apart_from_their_inputs(small_build):
    bundle, layouts = small_build
    model_c = (bundle.path / "model.c").read_text()
    calls = arena_arguments(model_c)
    assert [f for f, _ in calls] == [f for lay in layouts.values() for f, _ in lay.calls]
    assert sum(len(a) for _, a in calls) > len(calls)  # most calls read and write arena tensors
    assert model_c_arena_violations(model_c) == []
    # the check can fail: the first call that reads an arena tensor made to write its output on top of it
    step, (fname, args) = next((s, c) for s, c in enumerate(calls) if len(c[1]) >= 2 and c[1][-1][2])
    block = CALL.findall(model_c)[step][1]
    out_off, in_off = args[-1][0], args[0][0]
    broken = block.replace(f"(nfedge_arena + {out_off}), ", f"(nfedge_arena + {in_off}), ")
    assert broken != block
    assert any("output" in v for v in model_c_arena_violations(model_c.replace(block, broken, 1)))
