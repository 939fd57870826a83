"""The same plan and the same evaluate sweep whichever executor ran them (nfedge.executor): in this process, in two
local processes and on a local Ray; the JSON equal, one progress bar per sweep advanced as far."""

import dataclasses
import json

import pytest
import torch

from nfedge.analysis.evaluate import EvaluateConfig, evaluate
from nfedge.analysis.plan import PlanConfig, plan_operating_points
from nfedge.executor import ExecutorConfig, RayExecutor, open_executor
from nfedge.models import create_generator
from nfedge.progress import Progress
from nfedge.sram.image import build_image
from nfedge.train.eopm import init_identity

# Every kind of option (protections, fewer bits, a generator with and without MSBs), a validation split and a fixed
# voltage; small q and low c keep the chip counts small (5 chips certify the 0.2 quantile at 0.6)
PLAN = {"base": "cnn-xs", "chips": 5, "confirm_chips": 5, "quantile": 0.2, "confidence": 0.6, "parity": True,
        "msb": (1,), "fewer_bits": (4,), "generator_msb": 2, "voltages": (0.875,), "floor_drop": 4.0}


@dataclasses.dataclass
class _Bar:
    n: int = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class _Counting(Progress):
    """Records every bar a sweep opens (desc, and how far it got); says nothing."""

    opened: list = dataclasses.field(default_factory=list)

    def manual(self, desc, total=None, unit="it"):
        self.opened.append((desc, _Bar()))
        return self.opened[-1][1]

    def info(self, message):
        pass


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    from nfedge.models import create_base_model

    model = create_base_model("cnn-xs", in_channels=1, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(180, 1, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():  # labels = the float model's own predictions: CA is high, faults pull it down
        y = model(x).argmax(1)
    gen = init_identity(create_generator("ConvT", in_channels=1)).eval()
    with torch.no_grad():  # not quite the identity: F(x) differs from x, so the generator's inputs are their own
        for p in gen.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return model, build_image(model, 8), (x[:120], y[:120]), (x[120:], y[120:]), gen


def _plan(setup, executor):
    model, image, test, val, gen = setup
    progress = _Counting()
    r = plan_operating_points(model, image, test, PlanConfig(**PLAN), generators={"ConvT": ("ConvT", gen)},
                              progress=progress, validation=val, executor=executor)
    assert [d for d, _ in progress.opened] == ["plan"]  # one bar for the sweep, whichever executor
    return json.dumps(r, sort_keys=True), progress.opened[0][1].n


def test_plan_is_the_same_on_every_executor(setup, local_ray):
    here, n_here = _plan(setup, None)
    res = json.loads(here)
    assert len(res["options"]) == 8 and res["scored_images"] > 0 and n_here > 0
    assert any(r["certified"] for r in res["options"]) and res["fixed_voltages"]
    with RayExecutor(ExecutorConfig("ray")) as ex:
        on_ray, n_ray = _plan(setup, ex)
    assert on_ray == here and n_ray == n_here
    with open_executor("local:2") as ex:
        in_processes, n_proc = _plan(setup, ex)
    assert in_processes == here and n_proc == n_here


def test_evaluate_is_the_same_on_ray(setup, local_ray):
    model, image, test, _, gen = setup
    cfg = EvaluateConfig(voltages=(0.9, 0.86), chips=3)
    bars = []
    for executor in (None, "ray"):
        progress = _Counting()
        if executor is None:
            r = evaluate(model, image, test, cfg, generators={"ConvT": gen}, progress=progress)
            here = json.dumps(r, sort_keys=True)
        else:
            with RayExecutor(ExecutorConfig("ray")) as ex:
                r = evaluate(model, image, test, cfg, generators={"ConvT": gen}, progress=progress, executor=ex)
            assert json.dumps(r, sort_keys=True) == here
        bars.append([(d, b.n) for d, b in progress.opened])
    assert bars[0] == bars[1] == [("evaluate", 6)]
    assert len({c["PA"]["mean"] for c in r["conditions"]} | {r["clean"]["CA"]}) > 1  # faults changed something
