"""nfedge.executor: the --executor spec, ordered results on every executor, a Ray worker killed mid-task (retried, the
same results), a task's bad input failing the run with its one line, and the errors a user can meet."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle

from nfedge.analysis.evaluate import ImageScorer
from nfedge.analysis.sweep_work import ScoringWork, build_context, evaluate_image
from nfedge.errors import NfedgeError
from nfedge.executor import ExecutorConfig, InlineExecutor, ProcessExecutor, RayExecutor, open_executor
from nfedge.sram.faults import InjectConfig
from nfedge.sram.image import build_image

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module


def _scaled(ctx, item):
    return ctx["k"] * item


def _pid_then_sleep(ctx, item):
    """The first attempt of the marked item writes its worker's pid and sleeps (the test kills it there); the retry
    finds the marker and returns at once."""
    x, marker = item
    if marker is not None and not os.path.exists(marker):
        Path(marker + ".part").write_text(str(os.getpid()))
        os.replace(marker + ".part", marker)
        time.sleep(120)
    return ctx["k"] * x


@pytest.mark.parametrize("text, kind, workers, address", [
    ("local", "local", None, None), ("local:3", "local", 3, None), ("ray", "ray", None, None),
    ("ray:10.0.0.5:6379", "ray", None, "10.0.0.5:6379"), ("ray:ray://head:10001", "ray", None, "ray://head:10001")])
def test_spec(text, kind, workers, address):
    cfg = ExecutorConfig.parse(text)
    assert (cfg.kind, cfg.workers, cfg.address) == (kind, workers, address)
    assert str(cfg) == text or text == "local"


@pytest.mark.parametrize("text", ["foo", "local:x", "local:0", "dask:1"])
def test_bad_spec(text):
    with pytest.raises(NfedgeError, match="local"):
        ExecutorConfig.parse(text)


def test_ray_not_installed_says_how(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets on a plain `pip install nfedge`
    with pytest.raises(NfedgeError, match=r"pip install nfedge\[ray\]"):
        open_executor("ray")


def test_unreachable_cluster_fails_fast():
    assert not ray.is_initialized()
    t0 = time.monotonic()
    with pytest.raises(NfedgeError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        open_executor("ray:127.0.0.1:1")
    assert time.monotonic() - t0 < 30 and not ray.is_initialized()


def test_inline_and_processes_keep_order():
    assert isinstance(open_executor("local"), InlineExecutor)
    items = list(range(7))
    with open_executor("local:2") as ex:
        assert isinstance(ex, ProcessExecutor) and ex.workers == 2
        got = ex.map(_scaled, ex.share({"k": 5}), items)
    assert got == [5 * i for i in items]
    with InlineExecutor() as ex:
        assert ex.map(_scaled, ex.share({"k": 5}), items) == got


def test_ray_keeps_order_and_advances_one_bar(local_ray):
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    with RayExecutor(ExecutorConfig("ray")) as ex:
        assert ex.workers == 2
        got = ex.map(_scaled, ex.share({"k": 3}), list(range(9)), bar)
    assert got == [3 * i for i in range(9)] and bar.n == 9
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_killed_worker_is_retried_and_the_result_is_unchanged(local_ray, tmp_path):
    marker = str(tmp_path / "pid")
    killed = []

    def kill_when_written():
        deadline = time.monotonic() + 120
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(Path(marker).read_text())
        time.sleep(0.5)  # well inside the task's sleep
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_when_written)
    killer.start()
    items = [(i, marker if i == 3 else None) for i in range(8)]
    with RayExecutor(ExecutorConfig("ray", max_retries=2)) as ex:
        t0 = time.monotonic()
        got = ex.map(_pid_then_sleep, ex.share({"k": 7}), items)
    killer.join()
    assert got == [7 * i for i in range(8)]
    assert killed and killed[0] != os.getpid() and time.monotonic() - t0 < 100  # retried, not slept out
    assert _gone(killed[0])  # that worker process really died (it may linger as a zombie until Ray reaps it)


def _gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_bad_input_fails_the_run_with_its_one_line(local_ray, small_model):
    x = ray  # noqa: F841  (the module's Ray is running)
    import torch

    image = build_image(small_model, 8)
    test = (torch.zeros(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))
    work = ScoringWork(ImageScorer, small_model, {"test": test}, {}, 4, {0: image}, "sram-14nm")
    items = [("inject", InjectConfig(voltage=v, chip=0)) for v in (0.9, 0.5, 0.88)]  # 0.5 V/Vmin: below the table
    with RayExecutor(ExecutorConfig("ray")) as ex:
        with pytest.raises(NfedgeError) as e:
            ex.map(evaluate_image, ex.share(work, build_context), items)
    msg = str(e.value)
    assert msg.startswith("voltage 0.5 is outside calibration 'sram-14nm'") and "\n" not in msg
    assert "Traceback" not in msg and "Ray" not in msg


def test_plain_install_does_not_pull_ray():
    import importlib.metadata
    import sysconfig
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.lower().startswith("ray") for d in project["dependencies"])
    assert [d for d in project["optional-dependencies"]["ray"] if d.startswith("ray")] == ["ray==2.54.0"]
    # the installed metadata (pip install -e .[test,ray] in scripts/setup.sh; site-packages, not a stale
    # nfedge.egg-info a build may leave in the checkout): Ray only under the extra
    (dist,) = importlib.metadata.Distribution.discover(name="nfedge", path=[sysconfig.get_paths()["purelib"]])
    reqs = [r for r in dist.requires or [] if r.lower().startswith("ray")]
    assert reqs and all('extra == "ray"' in r for r in reqs)


@pytest.mark.parametrize("command", ["plan", "evaluate"])
def test_cli_refuses_a_bad_executor_in_one_line(command, tmp_path):
    from conftest import run_nfedge

    r = run_nfedge(command, "--base", tmp_path / "none.pt", "--image", tmp_path / "none", "--executor", "dask:4")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "nfedge: error: --executor must be local[:N] or ray[:ADDRESS], got 'dask:4'"]
