"""``--engine ray``: a model-calling stage's chunks computed by Ray actors.

Imported only when a stage runs with ``engine: ray``, so Ray stays an optional extra.

- ``connect`` joins the Ray instance at ``ray_address`` (``auto``: the cluster this node
  belongs to) or, without an address, joins or starts a local one; an address that does not
  answer is a ``ConfigError`` naming ``ray_address`` before anything is written.
- ``map_chunks`` starts ``workers`` actors. Each enters the stage's ``opener`` once (one
  backend instance per actor: a vLLM engine on one GPU, a transformers model, or an HTTP
  client) and computes the chunks it is handed. Ray's ``ActorPool`` hands out the chunks and
  yields each result as it returns; the caller journals it. An actor whose process dies is
  restarted by Ray (``max_restarts``) and its unfinished call is retried
  (``max_task_retries``), so a killed worker costs one chunk's time, not the run.

The journal stays with the caller (the driver): Ray's own checkpointing is not used.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from mipo_engine.errors import ConfigError

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
    """One Ray actor: a model opened once, then one call per chunk."""

    def __init__(self, opener: Callable[[], AbstractContextManager[Any]], work: Callable) -> None:
        self._context = opener()
        self._model = self._context.__enter__()
        self._work = work

    def run(self, index: int, chunk: list[Any]) -> tuple[int, Any]:
        return index, self._work(self._model, chunk)

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def map_chunks(
    settings: ModelCallConfig,
    opener: Callable[[], AbstractContextManager[Any]],
    work: Callable[[Any, list[T]], R],
    chunks: list[list[T]],
) -> Iterator[tuple[list[T], R]]:
    """Compute ``work(model, chunk)`` for every chunk on ``settings.workers`` actors; yield
    ``(chunk, result)`` as each returns (completion order, not input order)."""
    ray = _ray()
    connect(settings)
    from ray.util import ActorPool

    remote = ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)(_ChunkWorker)
    options = _actor_resources(ray, settings)
    count = min(settings.workers, len(chunks))
    actors = [remote.options(**options).remote(opener, work) for _ in range(count)]
    pool = ActorPool(actors)
    try:
        for index, result in pool.map_unordered(
            lambda actor, item: actor.run.remote(*item), list(enumerate(chunks))
        ):
            yield chunks[index], result
        ray.get([actor.close.remote() for actor in actors])
    except ray.exceptions.RayError as error:
        raise _stage_error(error) from None
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _stage_error(error: Exception) -> Exception:
    """The project's error a worker raised (a bad model path, say), else a BackendError."""
    from mipo_engine.errors import BackendError, MipoError

    cause = getattr(error, "cause", None)
    if isinstance(cause, MipoError):
        return cause
    return BackendError(f"a Ray worker failed: {error}")
