"""``--engine ray``: a model-calling stage's chunks computed on Ray Data's actor pool.

Imported only when a stage runs with ``engine: ray``, so Ray stays an optional extra.

- ``connect`` joins the Ray instance at ``ray_address`` (``auto``: the cluster this node
  belongs to) or, without an address, joins or starts a local one; an address that does not
  answer is a ``ConfigError`` naming ``ray_address`` before anything is written.
- ``map_chunks`` makes a Ray Dataset of the planned chunks (one row per chunk) and maps it
  with ``map_batches`` on a fixed pool of ``workers`` actors. Each actor enters the stage's
  ``opener`` once (one backend instance per actor: a vLLM engine on one GPU, a transformers
  model, or an HTTP client) and computes the chunks Ray Data hands it; results stream back
  as each finishes and the caller journals them. An actor whose process dies is restarted by
  Ray (``max_restarts``) and the chunk it held is retried (``max_task_retries``), so a killed
  worker costs one chunk's time, not the run.

The driver plans the chunks, because it holds the journal: a rerun after a crash plans only
the chunks the journal lacks. Ray Data's own checkpointing is not used.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from mipo_engine.errors import ConfigError, MipoError

if TYPE_CHECKING:
    from mipo_engine.modelcalls.settings import ModelCallConfig

T = TypeVar("T")
R = TypeVar("R")

RESTARTS = 4
"""How often Ray restarts a dead actor (and retries the call it was running)."""
PROBE_SECONDS = 5.0


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "Ray is not installed; install the extra: pip install 'mipo-engine[ray]'",
            key="engine",
        ) from None
    return ray


def _probe(address: str) -> None:
    """Fail fast when nothing listens at ``host:port`` (``ray.init`` would wait for minutes)."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"{address!r} is not host:port (or auto, or unset for a local instance)",
            key="ray_address",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as error:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
            "`ray start --head` or leave the option out for a local instance",
            key="ray_address",
        ) from None


def connect(settings: ModelCallConfig) -> None:
    """Join (or start) the Ray instance the run uses; this process stays connected."""
    ray = _ray()
    address = settings.ray_address
    if address not in (None, "auto", "local"):
        _probe(address)
    if ray.is_initialized():
        return  # this process already belongs to a Ray instance (a pipeline, a notebook)
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"could not join Ray: {error}", key="ray_address") from None


def _actor_resources(ray: Any, settings: ModelCallConfig) -> dict[str, float]:
    """One GPU per actor when the cluster has GPUs and the model runs in the actor; CPU
    shares otherwise (more actors than CPUs then share them rather than wait forever)."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if gpus and settings.backend != "openai":
        if gpus < settings.workers:
            raise ConfigError(
                f"{settings.workers} workers need one GPU each; the cluster has {gpus:g}",
                key="workers",
            )
        return {"num_gpus": 1, "num_cpus": 1}
    cpus = max(resources.get("CPU", 1), 1)
    return {"num_cpus": min(1.0, cpus / settings.workers)}


class _ChunkWorker:
    """One actor of the pool: the model opened once, then one chunk per batch.

    An error while opening the model (a bad path, say) is kept and raised by the first
    chunk, so it reaches the driver as the stage's own error; raised in the constructor it
    would leave the pool waiting for an actor that never starts.
    """

    def __init__(self, opener: Callable[[], AbstractContextManager[Any]], work: Callable) -> None:
        self._work = work
        self._failure: BaseException | None = None
        try:
            self._context = opener()
            self._model = self._context.__enter__()
        except Exception as error:  # raised again, with its type, by the first chunk
            self._failure = error

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        from ray import cloudpickle

        if self._failure is not None:
            raise self._failure
        results = [
            cloudpickle.dumps(self._work(self._model, cloudpickle.loads(payload)))
            for payload in batch["payload"]
        ]
        return {"index": batch["index"], "result": np.array(results, dtype=object)}

    def __del__(self) -> None:
        context = getattr(self, "_context", None)
        if context is not None and self._failure is None:
            with contextlib.suppress(Exception):
                context.__exit__(None, None, None)


def map_chunks(
    settings: ModelCallConfig,
    opener: Callable[[], AbstractContextManager[Any]],
    work: Callable[[Any, list[T]], R],
    chunks: list[list[T]],
) -> Iterator[tuple[list[T], R]]:
    """Compute ``work(model, chunk)`` for every chunk on ``settings.workers`` actors; yield
    ``(chunk, result)`` as each returns (completion order, not input order)."""
    _ray()
    connect(settings)
    import ray.data
    from ray import cloudpickle

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # the stage reports progress
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True  # a MipoError arrives as itself
    rows = [
        {"index": index, "payload": cloudpickle.dumps(chunk)} for index, chunk in enumerate(chunks)
    ]
    with warnings.catch_warnings():
        # Ray 2.60 deprecates restart limits passed as remote arguments without naming a
        # replacement; without them an actor that keeps dying is restarted forever.
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _ChunkWorker,
            fn_constructor_args=(opener, work),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(settings.workers, len(chunks))),
            max_restarts=RESTARTS,
            max_task_retries=RESTARTS,
            **_actor_resources(ray, settings),
        )
    try:
        for row in dataset.iter_rows():
            yield chunks[int(row["index"])], cloudpickle.loads(row["result"])
    except MipoError:
        raise
    except Exception as error:
        raise _stage_error(error) from None


def _stage_error(error: Exception) -> Exception:
    """The project's error a worker raised (a bad model path, say), else a BackendError."""
    from mipo_engine.errors import BackendError

    cause = getattr(error, "cause", None)
    if isinstance(cause, MipoError):
        return cause
    return BackendError(f"a Ray worker failed: {error}")
