"""Where a sweep's independent tasks run: `--executor local[:N]` or `--executor ray[:ADDRESS]` (docs/SWEEPS.md).

A sweep (evaluate's chips x voltages, plan's per-chip scoring, faultrun's emulator runs) is many pure tasks over a few
large inputs. The seam is small:

    with open_executor(ExecutorConfig.parse("ray:10.0.0.5:6379"), default_workers=1) as ex:
        ctx = ex.share(work, build_scorers)   # pickled once, content-addressed (sha256), shipped once per worker
        for r in ex.imap(score_cell, ctx, items, bar):   # fn(build_scorers(work), item), results in item order
            ...

local:1 runs tasks inline in this process; local:N (N > 1) in N spawned processes on this machine (no dependency
beyond the standard library); ray runs them as Ray tasks on a running cluster (ADDRESS) or on a local Ray started for
the run (`pip install nfedge[ray]`). A shared input travels as bytes with its sha256: a worker on another machine
needs nothing from this machine's disk. Ray retries a task whose worker died (max_retries); a task that raises
NfedgeError (bad input) fails the run with that one line, the other tasks cancelled.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cloudpickle

from nfedge.config import require
from nfedge.errors import NfedgeError

KINDS = ("local", "ray")
RAY_HINT = "pip install nfedge[ray]"
_CONNECT_TIMEOUT_S = 5.0  # a cluster address that does not answer within this is refused (ray.init would wait forever)
_MEMO_SIZE = 4  # built contexts kept per worker process (one sweep uses one or two)


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"  # local | ray
    workers: int | None = None  # local: parallel tasks (None: the command's own default); ray: unused
    address: str | None = None  # ray: a running cluster (host:port, ray://host:port, auto); None: a local Ray
    max_retries: int = 3  # ray: re-runs of a task whose worker process died (not of one that raised)

    def __post_init__(self) -> None:
        require(self.kind in KINDS, f"executor must be local[:N] or ray[:ADDRESS], got {self.kind!r}")
        require(self.workers is None or (isinstance(self.workers, int) and self.workers >= 1),
                f"executor local:N needs N >= 1, got {self.workers!r}")
        require(self.kind == "ray" or self.address is None, "only the ray executor takes an address")
        require(isinstance(self.max_retries, int) and self.max_retries >= 0, "max_retries must be >= 0")

    @classmethod
    def parse(cls, text: str | None) -> ExecutorConfig:
        """'local', 'local:4', 'ray', 'ray:10.0.0.5:6379', 'ray:ray://head:10001', 'ray:auto'."""
        text = (text or "local").strip()
        kind, _, rest = text.partition(":")
        if kind == "local":
            if rest and not rest.isdigit():
                raise NfedgeError(f"--executor local:N takes a number of processes, got {text!r}")
            return cls("local", int(rest) if rest else None)
        if kind == "ray":
            return cls("ray", None, rest or None)
        raise NfedgeError(f"--executor must be local[:N] or ray[:ADDRESS], got {text!r}")

    def __str__(self) -> str:
        return self.kind + (f":{self.workers}" if self.workers else "") + (f":{self.address}" if self.address else "")


@dataclasses.dataclass(frozen=True)
class Shared:
    """A large input shared by a sweep's tasks: its pickled bytes' sha256 and where a worker gets them (the object
    itself inline, a file for local processes, a Ray object reference), and the function that turns it into the
    tasks' context (built once per worker process and digest)."""

    digest: str
    build: Callable[[Any], Any]
    handle: Any


# The built contexts of this worker process, by (digest, builder). The one piece of process state, on purpose: a
# worker serves many tasks of a sweep, and building the context (a scorer: the generators' forward pass over every
# image) once per task would cost more than the task. Keyed by content, so a hit is always the same input; bounded,
# so a long-lived Ray worker does not grow.
_WORKER_CONTEXTS: collections.OrderedDict = collections.OrderedDict()


def identity(obj: Any) -> Any:
    """The default context: the shared object itself (a module function: it travels to workers by name)."""
    return obj


def _context(shared: Shared, load: Callable[[], bytes]) -> Any:
    key = (shared.digest, getattr(shared.build, "__qualname__", repr(shared.build)))
    memo = _WORKER_CONTEXTS
    if key not in memo:
        memo[key] = shared.build(cloudpickle.loads(load()))
        while len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)
    memo.move_to_end(key)
    return memo[key]


def _one_thread() -> None:
    """A local worker computes with one thread, as a Ray task of one CPU does: N workers on N cores, not N x N
    threads fighting over them (set before torch starts its thread pools)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _run_in_process(fn, shared: Shared | None, item):
    """A task in a local worker process: the shared bytes come from the executor's folder on this machine."""
    ctx = None if shared is None else _context(shared, lambda: Path(shared.handle).read_bytes())
    return fn(ctx, item)


def _run_on_ray(fn, shared: Shared | None, item):
    """A Ray task: the shared bytes come from the object store (a reference nested in `shared`, so Ray does not
    fetch them for tasks whose worker already built the context)."""
    import ray

    ctx = None if shared is None else _context(shared, lambda: ray.get(shared.handle[0]))
    return fn(ctx, item)


class Executor:
    """Runs `fn(context, item)` for every item. Subclasses: inline, local processes, Ray."""

    kind = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers  # tasks that can run at once (what a batch of speculative work is sized to)

    @property
    def inline(self) -> bool:
        """Tasks run in this process, one after another: callers keep their in-process path."""
        return False

    def share(self, obj: Any, build: Callable[[Any], Any] | None = None) -> Shared:
        data = cloudpickle.dumps(obj)
        return self._share(hashlib.sha256(data).hexdigest(), data, build or identity)

    def _share(self, digest: str, data: bytes, build) -> Shared:
        raise NotImplementedError

    def imap(self, fn: Callable[[Any, Any], Any], shared: Shared | None, items: Iterable[Any],
             bar=None) -> Iterator[Any]:
        """fn(context, item) for every item, yielded in item order as soon as each one and those before it are done;
        `bar` (a tqdm from nfedge.progress) advances by one per finished task, whatever the order."""
        raise NotImplementedError

    def map(self, fn, shared: Shared | None, items: Iterable[Any], bar=None) -> list[Any]:
        return list(self.imap(fn, shared, items, bar))

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineExecutor(Executor):
    """local:1: every task in this process, in order (what the commands did before executors)."""

    def __init__(self) -> None:
        super().__init__(1)
        self._built: dict[str, Any] = {}

    @property
    def inline(self) -> bool:
        return True

    def share(self, obj: Any, build: Callable[[Any], Any] | None = None) -> Shared:
        return Shared(f"inline-{id(obj):x}", build or identity, obj)  # nothing leaves the process: no bytes, no hash

    def imap(self, fn, shared, items, bar=None):
        ctx = None
        if shared is not None:
            if shared.digest not in self._built:
                self._built[shared.digest] = shared.build(shared.handle)
            ctx = self._built[shared.digest]
        for item in items:
            out = fn(ctx, item)
            if bar is not None:
                bar.update(1)
            yield out


class ProcessExecutor(Executor):
    """local:N: N spawned worker processes on this machine (spawn, not fork: torch's thread pools do not survive a
    fork); shared inputs go through files in a private folder, read once per worker."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._dir = tempfile.TemporaryDirectory(prefix="nfedge-executor-")
        self._pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                            initializer=_one_thread)

    def _share(self, digest, data, build):
        path = Path(self._dir.name) / f"{digest}.pkl"
        if not path.exists():
            path.write_bytes(data)
        return Shared(digest, build, str(path))

    def imap(self, fn, shared, items, bar=None):
        futures = [self._pool.submit(_run_in_process, fn, shared, item) for item in items]
        if bar is not None:
            for f in futures:
                f.add_done_callback(lambda _: bar.update(1))
        try:
            for f in futures:
                try:
                    yield f.result()
                except concurrent.futures.process.BrokenProcessPool:
                    raise NfedgeError("a local worker process died (killed, or out of memory); the ray executor "
                                      "retries such tasks") from None
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._dir.cleanup()


class RayExecutor(Executor):
    """Ray tasks: on the cluster at `address`, or on a local Ray started here (and stopped by close()). A Ray already
    initialised in this process (a test's ray.init(num_cpus=2)) is used as it is and left running."""

    kind = "ray"

    def __init__(self, cfg: ExecutorConfig) -> None:
        # Ray's tqdm support replaces builtins.print in the driver process (for good) the first time a task's progress
        # reaches it: the user's process must keep its own print. Read by Ray when that happens; the user may override.
        os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
        try:
            import ray
        except ImportError:
            raise NfedgeError(f"the ray executor needs Ray: {RAY_HINT}") from None
        self._ray, self._started = ray, False
        if not ray.is_initialized():
            if cfg.address not in (None, "auto"):
                _check_reachable(cfg.address)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # Ray's note about accelerator variables
                try:
                    ray.init(address=cfg.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as e:
                    where = cfg.address or "a local Ray"
                    raise NfedgeError(f"cannot start or reach {where}: {str(e).splitlines()[0][:200]}") from None
            self._started = True
        super().__init__(max(1, int(ray.cluster_resources().get("CPU", 1))))
        # one CPU per task: Ray then sets OMP_NUM_THREADS=1 in the worker, so tasks do not fight over cores
        self._task = ray.remote(_run_on_ray).options(num_cpus=1, max_retries=cfg.max_retries, retry_exceptions=False)

    def _share(self, digest, data, build):
        return Shared(digest, build, [self._ray.put(data)])  # in a list: tasks get the reference, not the bytes

    def imap(self, fn, shared, items, bar=None):
        ray = self._ray
        refs = [self._task.remote(fn, shared, item) for item in items]
        done: set = set()
        pending = list(refs)
        try:
            for ref in refs:
                while ref not in done:
                    ready, pending = ray.wait(pending, num_returns=1)
                    for r in ready:
                        done.add(r)
                        if bar is not None:
                            bar.update(1)
                yield _ray_result(ray, ref)
        finally:
            for r in pending:
                ray.cancel(r)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def _ray_result(ray, ref):
    """The task's value; a task's own NfedgeError as that one line (not Ray's traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, NfedgeError):
            raise NfedgeError(str(cause)) from None
        if cause is not None:
            raise cause from None
        raise NfedgeError(f"a Ray task failed: {str(e).splitlines()[0][:200]}") from None
    except ray.exceptions.RayError as e:  # worker died more often than max_retries, object lost, ...
        raise NfedgeError(f"a Ray task could not finish: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def _check_reachable(address: str) -> None:
    """A one-line error, within seconds, for a cluster address nothing listens on."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise NfedgeError(f"a Ray address is host:port (or ray://host:port), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise NfedgeError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with "
                          "`ray start --head` or give its address") from None


def open_executor(cfg: ExecutorConfig | str | None, default_workers: int = 1) -> Executor:
    """The executor `cfg` names; local without N runs `default_workers` tasks at once (the command's own default)."""
    if not isinstance(cfg, ExecutorConfig):
        cfg = ExecutorConfig.parse(cfg)
    if cfg.kind == "ray":
        return RayExecutor(cfg)
    n = cfg.workers or default_workers
    return InlineExecutor() if n == 1 else ProcessExecutor(n)

