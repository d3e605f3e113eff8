"""Where covnb's independent pieces of work run: in this process, or on a Dask cluster.

``covnb train --cluster SPEC`` (and the ``cluster`` argument of :func:`covnb.train.run_training`)
takes one of:

* ``local`` -- a :class:`distributed.LocalCluster` on this machine, one single-threaded worker
  process per CPU core; ``local:N`` -- with ``N`` worker processes;
* ``tcp://host:port`` (or ``tls://``, ``ucx://``, ``inproc://``) -- an existing Dask scheduler
  (started by ``dask scheduler``, dask-jobqueue, Dask on Kubernetes, ...);
* nothing -- the ``COVNB_SCHEDULER`` environment variable when set, else everything runs in this
  process, as before.

The work is then submitted as Dask tasks (Rocklin, "Dask: parallel computation with blocked
algorithms and task scheduling", SciPy 2015): frame decoding by chunks of files
(:func:`covnb.frames.extract_frames`), the frozen backbone by chunks of frames
(:func:`covnb.experiments.features.features_on_cluster`, into the shared feature store) and every
(split seed, fold) of a cross-validation
(:func:`covnb.experiments.crossval.run_cross_validation`) and every inner refit of the nested
calibration (:func:`covnb.trust_refits.inner_fold_predictions`); in the few-shot study
(:mod:`covnb.fewshot`) the embeddings, every (K, method) cell of a shot curve and every
(fold, n, repeat) of a patient learning curve. Results are gathered and assembled in
the serial order, so the out-of-fold predictions are byte-identical to an in-process run. A
worker that dies is replaced and its tasks run again (``distributed.scheduler.allowed-failures``).

Example::

    >>> with open_cluster("local:2") as client:   # doctest: +SKIP
    ...     run_training(None, "runs/phantom", cluster=client)
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import re
import threading
import warnings
from typing import Callable, Iterable, Iterator, Sequence

from covnb.quiet import verbose

__all__ = ["SCHEDULER_ENV", "ALLOWED_FAILURES", "ClusterSpec", "ClusterSpecError", "parse_cluster_spec",
           "open_cluster", "keep_cluster", "is_client", "share_payload", "map_with_payload",
           "worker_cached", "in_fit_thread"]

SCHEDULER_ENV = "COVNB_SCHEDULER"
#: How many times a task may lose its worker before the run fails (Dask's default is 3).
ALLOWED_FAILURES = 3
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://\S+$")


class ClusterSpecError(ValueError):
    """A cluster specification covnb does not understand; the message says what is accepted."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value: ``kind`` ``"local"`` (``workers`` processes, None: one per
    core) or ``"address"`` (an existing scheduler at ``address``)."""

    kind: str
    workers: int | None = None
    address: str | None = None

    def describe(self) -> str:
        if self.kind == "local":
            return f"LocalCluster of {self.workers or os.cpu_count() or 1} worker process(es)"
        return f"Dask scheduler at {self.address}"


_ACCEPTED = "'local', 'local:N' (N worker processes, N >= 1) or a scheduler address such as 'tcp://host:8786'"


def parse_cluster_spec(spec: str | None, *, environ: dict | None = None) -> ClusterSpec | None:
    """The :class:`ClusterSpec` of ``spec`` (or of ``$COVNB_SCHEDULER`` when ``spec`` is None or
    empty); None when neither names a cluster (run in this process).

    Raises
    ------
    ClusterSpecError
        For anything but ``local``, ``local:N`` or a scheduler address, naming where it came from.
    """
    environ = os.environ if environ is None else environ
    origin = "--cluster"
    if spec is None or not str(spec).strip():
        spec, origin = environ.get(SCHEDULER_ENV, ""), f"${SCHEDULER_ENV}"
        if not spec.strip():
            return None
    text = str(spec).strip()
    lowered = text.lower()
    if lowered == "local":
        return ClusterSpec("local")
    if lowered.startswith("local:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise ClusterSpecError(f"{origin} {text!r}: the number of workers must be a whole number >= 1; "
                                   f"accepted: {_ACCEPTED}")
        return ClusterSpec("local", workers=int(count))
    if _ADDRESS.match(text):
        return ClusterSpec("address", address=text)
    if re.match(r"^[\w.-]+:\d+$", text):
        raise ClusterSpecError(f"{origin} {text!r}: give the scheduler's protocol too, e.g. 'tcp://{text}'; "
                               f"accepted: {_ACCEPTED}")
    raise ClusterSpecError(f"{origin} {text!r} is not a cluster; accepted: {_ACCEPTED}")


def is_client(value) -> bool:
    """Whether ``value`` is a :class:`distributed.Client` (without importing distributed)."""
    return type(value).__name__ == "Client" and type(value).__module__.startswith("distributed")


@contextlib.contextmanager
def open_cluster(spec=None, *, log: Callable[[str], None] | None = print,
                 environ: dict | None = None) -> Iterator[object | None]:
    """A :class:`distributed.Client` for ``spec`` (see :func:`parse_cluster_spec`; an existing
    Client is used as it is), or None to run in this process. Closes what it opened (the local
    cluster and its workers, or the connection to a scheduler), never an existing cluster.

    The dashboard link is printed through ``log``.
    """
    if is_client(spec):
        yield spec
        return
    parsed = parse_cluster_spec(spec, environ=environ)
    if parsed is None:
        yield None
        return
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - dask is a dependency
        raise ClusterSpecError(f"--cluster needs dask[distributed] ({error}); pip install 'dask[distributed]'") \
            from None
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        if parsed.kind == "local":
            workers = parsed.workers or os.cpu_count() or 1
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
            client = Client(cluster)
        else:
            cluster = None
            try:
                client = Client(parsed.address, timeout="20s")
            except (OSError, TimeoutError) as error:
                raise ClusterSpecError(f"cannot reach the Dask scheduler at {parsed.address} ({error})") from None
        try:
            if not verbose():
                client.register_plugin(_quiet_worker_plugin())
            if log:
                log(f"cluster: {parsed.describe()}, dashboard {client.dashboard_link}")
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


#: Clusters a notebook keeps open across its cells (:func:`keep_cluster`), by their specification.
_KEPT: dict[str, tuple[object, contextlib.ExitStack]] = {}


def _quiet_worker_plugin():
    """A worker plugin that quiets TensorFlow's start-up lines in every worker, the replacements of
    lost ones included (:func:`covnb.quiet.install`: the client's own process is quieted the same way)."""
    from distributed import WorkerPlugin

    class QuietTensorFlow(WorkerPlugin):
        name = "covnb-quiet-tensorflow"

        def setup(self, worker):
            from covnb import quiet

            quiet.install()

    return QuietTensorFlow()


def keep_cluster(spec=None, *, log: Callable[[str], None] | None = print) -> object | None:
    """:func:`open_cluster`'s client, kept open across a notebook's cells and closed when the
    kernel exits; None to run in this process. Asking again for the same ``spec`` gives the same
    running client (a re-run cell starts no second cluster).

    Example::

        >>> client = keep_cluster(cluster)   # doctest: +SKIP  (a notebook's ``cluster`` parameter)
        >>> fewshot_study.shot_curves(..., client=client)   # doctest: +SKIP
    """
    if is_client(spec):
        return spec
    key = str(spec if spec is not None and str(spec).strip() else os.environ.get(SCHEDULER_ENV, "")).strip()
    if key in _KEPT and getattr(_KEPT[key][0], "status", None) == "running":
        return _KEPT[key][0]
    stack = contextlib.ExitStack()
    client = stack.enter_context(open_cluster(spec, log=log))
    if client is None:
        stack.close()
        return None
    _KEPT[key] = (client, stack)
    atexit.register(stack.close)
    return client


#: The one thread of a worker process in which covnb fits (see :func:`in_fit_thread`).
_FIT_THREAD = None


def in_fit_thread(function: Callable, *args):
    """``function(*args)``, run in one thread of this (worker) process, always the same.

    Keras keeps its global seed per thread, and a Dask worker's executor may hand a task any of
    its threads: every fit of covnb's tasks (cross-validation folds, learning-curve repeats) runs
    in this one thread, so a seeded fit draws what it draws in a serial run."""
    global _FIT_THREAD
    if _FIT_THREAD is None:
        from concurrent.futures import ThreadPoolExecutor

        _FIT_THREAD = ThreadPoolExecutor(1, thread_name_prefix="covnb-fit")
    return _FIT_THREAD.submit(function, *args).result()


def _held(payload):
    return payload


def share_payload(client, payload, *, name: str):
    """Send ``payload`` (weights, features, frames) to the cluster once, as the result of a task
    keyed ``name`` that every task of a run takes as an argument: unlike a scatter, the task is
    recomputed if the worker holding its result dies. Dask's warning about a large graph is
    expected here and silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        return client.submit(_held, payload, pure=False, key=name)


def map_with_payload(client, function: Callable, payload: dict, items: Sequence[tuple], *, name: str,
                     payload_name: str | None = None, keys: Iterable | None = None,
                     on_done: Callable[[int, object], None] | None = None) -> list:
    """``function(payload, *item)`` for every item of ``items`` as a Dask task, the results in
    ``items``' order. ``payload`` (a dict, given a fresh ``"token"`` for :func:`worker_cached`) is
    sent once (:func:`share_payload`, keyed ``{payload_name or name}-{token[:8]}``); task ``i`` is
    keyed ``{name}-{token[:8]}-{keys[i]}`` (``keys`` default: the positions). ``on_done(i, result)``,
    when given, is called here for each task that finishes, as it finishes. ``function`` must be
    importable on the workers (a module-level function)."""
    import uuid

    token = uuid.uuid4().hex
    sent = share_payload(client, {**payload, "token": token}, name=f"{payload_name or name}-{token[:8]}")
    keys = range(len(items)) if keys is None else keys
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)  # each task's arguments, sent once
        futures = [client.submit(function, sent, *item, pure=False, key=f"{name}-{token[:8]}-{key}")
                   for item, key in zip(items, keys, strict=True)]
    if on_done is not None:
        from distributed import as_completed

        position = {future.key: i for i, future in enumerate(futures)}
        for future in as_completed(futures):
            if future.status == "finished":
                on_done(position[future.key], future.result())
    return client.gather(futures)


#: Objects rebuilt on a worker from a payload, by the payload's token (see :func:`worker_cached`).
_WORKER_CACHE: dict[str, object] = {}
_WORKER_LOCK = threading.RLock()


def worker_cached(token: str, build: Callable[[], object], *, keep: int = 1):
    """On a worker: ``build()``'s object for ``token`` (a :func:`map_with_payload` payload's),
    built once per worker and token; the objects of only the last ``keep`` tokens are kept."""
    with _WORKER_LOCK:
        if token not in _WORKER_CACHE:
            while _WORKER_CACHE and len(_WORKER_CACHE) >= keep:
                _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
            _WORKER_CACHE[token] = build()
        return _WORKER_CACHE[token]
