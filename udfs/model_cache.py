"""A per-Python-worker cache of built scoring models, keyed by the bundle's sha256.

In the style of `pyspark.ml.model_cache.ModelCache`: with `spark.python.worker.reuse=true` (the
default, and set by lakescore's session factory) a Python worker serves many tasks, so the model
is verified and built on the first task and reused after that. Keying by the bundle's sha256
(not by a broadcast id) means a re-broadcast of the same bundle still hits the cache, and two
bundles can never be confused.

This is the one piece of process-global mutable state in lakescore, and it is deliberate: it lives
only in executor Python workers, holds immutable values, and is bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Callable, ClassVar, Generic, TypeVar

T = TypeVar("T")


class ModelCache(Generic[T]):
    """A small LRU map sha256 -> built model, safe to share between threads of one worker.

    Operational caveats (same as pyspark.ml's):
    - needs `spark.python.worker.reuse=true`, else every task starts a worker with an empty cache;
    - Spark stops a Python worker idle for about a minute, which empties its cache;
    - each cached model is held by every Python worker (one per executor core): budget
      `spark.executor.pyspark.memory` / memory overhead for `capacity` models per worker.
    """

    capacity: ClassVar[int] = 3

    def __init__(self) -> None:
        self._models: OrderedDict[str, T] = OrderedDict()
        self._lock = Lock()
        self.builds = 0  # how many times `get_or_build` had to build (tests read it)

    def get(self, key: str) -> T | None:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def add(self, key: str, model: T) -> None:
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)

    def get_or_build(self, key: str, build: Callable[[], T]) -> T:
        """The cached model for `key`, building (and caching) it on a miss."""
        model = self.get(key)
        if model is None:
            model = build()
            with self._lock:
                self.builds += 1
            self.add(key, model)
        return model


# The worker-wide instance the scoring UDF uses (one per Python worker process).
SCORING_MODELS: ModelCache = ModelCache()
