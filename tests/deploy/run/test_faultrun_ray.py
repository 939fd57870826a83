"""faultrun's emulator runs on a local Ray (the bundle shipped as bytes, nfedge.deploy.run.remote): the same JSON as
the emulator processes run from this process, one progress bar; a run that fails on a worker names its chip."""

import dataclasses
import json

import pytest

from nfedge.deploy.run.faultrun import FaultrunConfig, faultrun
from nfedge.errors import NfedgeError
from nfedge.executor import ExecutorConfig, RayExecutor
from nfedge.progress import Progress

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


@dataclasses.dataclass(frozen=True)
class _Bars(Progress):
    opened: list = dataclasses.field(default_factory=list)

    def manual(self, desc, total=None, unit="it"):
        self.opened.append(desc)
        return super().manual(desc, total, unit)


def test_faultrun_is_the_same_on_ray(fr_bundle, local_ray):
    cfg = FaultrunConfig(voltages=(0.875, 0.833), chips=2, samples=4)
    here, there = _Bars(enabled=False), _Bars(enabled=False)
    local = faultrun(fr_bundle / "bundle", None, cfg, here)
    with RayExecutor(ExecutorConfig("ray")) as ex:
        remote = faultrun(fr_bundle / "bundle", None, cfg, there, executor=ex)
    assert json.dumps(remote, sort_keys=True) == json.dumps(local, sort_keys=True)
    assert local["agreement"]["passed"] and local["instructions_per_inference"]["base"] > 100_000
    assert here.opened == there.opened == ["faultrun on cortex-m55"]


def test_a_failing_emulator_run_names_its_chip(fr_bundle, local_ray):
    cfg = FaultrunConfig(voltages=(0.833,), chips=1, samples=4, timeout_s=0.2)
    with RayExecutor(ExecutorConfig("ray")) as ex:
        with pytest.raises(NfedgeError) as e:
            faultrun(fr_bundle / "bundle", None, cfg, Progress(enabled=False), executor=ex)
    assert str(e.value).startswith("chip 0 at 0.833 V/Vmin: ") and "\n" not in str(e.value)
