"""Chooses and loads each model's backend once per process, and hands out shared batchers.

Choice per model, best first: native TensorRT, ONNX Runtime with the TensorRT provider, with
the CUDA provider, with the CPU provider. The top-level `device` narrows it ('cpu': the CPU
provider only; 'cuda': GPU backends only), `engines.backend` (or `--backend`) and
`engines.backends[model]` force one. A backend that is not installed, finds no GPU or
cannot build the model is skipped with its reason logged; the choice is logged too and shown
by `livesense engines list`.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livesense.config import EngineSettings
from livesense.engines.batcher import Batcher
from livesense.engines.calibration_recorder import CalibrationRecorder, load_feeds
from livesense.engines.engine import (
    BackendUnavailableError,
    Engine,
    EngineBuildError,
    EngineError,
    EngineMissingError,
    onnx_inputs,
)
from livesense.engines.engine_cache import EngineCache, EngineKey, file_sha256
from livesense.engines.gpu import detect_gpu, tensorrt_version
from livesense.engines.model_spec import (
    Buckets,
    ModelSpec,
    Profile,
    batch_sizes,
    profile_key,
    profile_text,
)
from livesense.engines.onnx import (
    CPU,
    CUDA,
    TENSORRT,
    OnnxEngine,
    available_providers,
    tensorrt_libraries,
)

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "ort-tensorrt", "ort-cuda", "ort-cpu")
INSTALL_GPU = "(pip install 'livesense[gpu]' for CUDA 12, 'livesense[gpu-cu13]' for CUDA 13)"
GPU_BACKENDS = BACKENDS[:3]


def backend_problem(backend: str) -> str | None:
    """Why `backend` cannot run here, or None where it may (a load can still fail)."""
    if backend == "ort-cpu":
        return None
    if backend not in BACKENDS:
        return f"unknown backend '{backend}' (one of {', '.join(BACKENDS)})"
    if backend == "tensorrt":
        for module, package in (("tensorrt", "tensorrt"), ("cuda", "cuda-python")):
            if importlib.util.find_spec(module) is None:
                return f"the package '{package}' is not installed {INSTALL_GPU}"
    else:
        provider = TENSORRT if backend == "ort-tensorrt" else CUDA
        if provider not in available_providers():
            return f"onnxruntime has no {provider} {INSTALL_GPU}"
    if detect_gpu() is None:
        return "no NVIDIA GPU was found"
    if backend == "ort-tensorrt" and not tensorrt_libraries():
        return f"TensorRT's libraries (libnvinfer) are not installed {INSTALL_GPU}"
    return None


def best_seconds(fn: Callable[[], Any], runs: int) -> float:
    """Seconds of one call of `fn`: one untimed call first, then the best of `runs`."""
    fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def per_item_seconds(engine: Engine, buckets: Buckets, batch: int, runs: int = 3) -> float:
    """Seconds per item of `engine` at its most common bucket and this batch size (zeros in,
    one untimed run first, the best of `runs`)."""
    import numpy as np

    kinds = {t.name: t.dtype for t in engine.inputs()}
    feeds: dict[str, Any] = {}
    for name in buckets.inputs:
        if name in kinds:
            dtype = np.int64 if "int64" in kinds[name] else np.float32
            feeds[name] = np.zeros(buckets.shape_at(buckets.opt, name, batch), dtype)
    for name, value in buckets.constants.items():
        feeds[name] = np.array(value, np.int64 if "int64" in kinds.get(name, "") else np.float32)

    def once() -> None:
        if engine.buckets is None:
            engine._run(feeds, None)
        else:
            engine._run_fixed(engine.buckets, feeds, None)

    return best_seconds(once, runs) / batch


SPLIT_MARGIN = 2.0
"""How much faster at the largest batch a backend must be to win a model that the other runs
faster at batch 1."""


def choose_placement(times: dict[str, list[float]], sizes: list[int]) -> tuple[str, str]:
    """The faster backend from seconds per item at each batch size, and why, in one line.

    Faster at every size wins. Where they split, the one faster at batch 1 keeps the model
    unless the other is at least SPLIT_MARGIN times faster at the largest batch: a live
    service runs small batches most of the time, and a GPU model also queues behind the GPU's
    other models.
    """
    (a, ta), (b, tb) = times.items()
    if all(x <= y for x, y in zip(ta, tb, strict=True)):
        winner = a
    elif all(y <= x for x, y in zip(ta, tb, strict=True)):
        winner = b
    else:
        small, big = (a, b) if ta[0] <= tb[0] else (b, a)
        t_small, t_big = times[small][-1], times[big][-1]
        winner = big if t_small >= SPLIT_MARGIN * t_big else small

    def ms(ts: list[float]) -> str:
        return ", ".join(f"{1000 * t:.3g} ms at {n}" for t, n in zip(ts, sizes, strict=True))

    return winner, f"{winner}: measured per item {a} {ms(ta)}; {b} {ms(tb)}"


def candidates(requested: str, device: str) -> list[str]:
    """Backends to try, best first, for a requested backend ('auto' or one) and device."""
    if requested != "auto":
        return [requested]
    if device == "cpu":
        return ["ort-cpu"]
    if device == "cuda":
        return list(GPU_BACKENDS)
    return list(BACKENDS)


@dataclass(slots=True)
class BuildResult:
    """What `livesense engines build` reports per model."""

    model: str
    backend: str
    precision: str
    status: str  # "built", "cached", "failed"
    cache: str | None
    seconds: float
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "status": self.status,
            "cache": self.cache,
            "seconds": round(self.seconds, 2),
            "error": self.error,
        }


class EngineFactory:
    """Loads models on the best backend, once per (model, file); shares batchers per model."""

    def __init__(self, settings: EngineSettings | None = None, device: str = "auto") -> None:
        self.settings = settings or EngineSettings()
        self.device = device
        self.cache = EngineCache(self.settings.cache_dir)
        self.skipped: dict[str, list[str]] = {}  # model -> "backend: reason"
        self._engines: dict[tuple[str, str], Engine] = {}
        self._batchers: dict[str, Batcher[Any, Any]] = {}
        self._lock = threading.RLock()
        self._build_lock = threading.Lock()

    # -- engines ----------------------------------------------------------------------------

    def engine(self, spec: ModelSpec, threads: int | None = None) -> Engine:
        """The shared engine of a model (loaded on first use)."""
        key = (spec.name, str(Path(spec.path).resolve()))
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self.load(spec, threads=threads)
                self._engines[key] = engine
            return engine

    def engines(self) -> list[Engine]:
        with self._lock:
            return list(self._engines.values())

    def load(
        self,
        spec: ModelSpec,
        backend: str | None = None,
        threads: int | None = None,
        precision: str | None = None,
    ) -> Engine:
        """A new engine for `spec` on the first backend that works (or the one forced).

        With backend 'auto', device 'auto' and a GPU backend that works, the model is timed
        there and on the CPU and placed where it is faster (`engines.placement`); the
        engine's `placement` says why it runs where it does. Buckets and warm-up follow.
        """
        s = self.settings
        forced = backend or s.backends.get(spec.name)
        requested = forced or s.backend
        engine, tried, broke = self._first_that_loads(spec, requested, threads, precision)
        self.skipped[spec.name] = tried
        self._fix_shapes(spec, engine)
        if backend is not None:
            engine.placement = f"{engine.backend}: asked for"
        elif s.backends.get(spec.name):
            engine.placement = f"{engine.backend}: set in engines.backends"
        elif requested != "auto":
            engine.placement = f"{engine.backend}: set in engines.backend"
        elif engine.backend == "ort-cpu":
            engine.placement = "ort-cpu: " + (
                "device is cpu" if self.device == "cpu" else "no GPU backend could run it"
            )
        elif self.device == "cuda":
            engine.placement = f"{engine.backend}: device is cuda"
        else:
            engine = self._place(spec, engine, threads)
        # Falling back from a GPU backend that is installed deserves a warning.
        level = logging.WARNING if tried and broke else logging.INFO
        log.log(
            level,
            "engine %s: %s %s (%s); %s%s",
            spec.name,
            engine.backend,
            engine.precision,
            ", ".join(engine.providers),
            engine.placement,
            f" [skipped {'; '.join(tried)}]" if tried else "",
        )
        if s.record_calibration:
            engine.recorder = CalibrationRecorder(
                self.cache.calibration_dir(spec.name), s.calibration_samples
            )
        return engine

    def _first_that_loads(
        self, spec: ModelSpec, requested: str, threads: int | None, precision: str | None
    ) -> tuple[Engine, list[str], bool]:
        tried: list[str] = []
        broke = False  # a backend that is there failed on this model (not merely absent)
        order = candidates(requested, self.device)
        for name in order:
            problem = backend_problem(name)
            if problem is None:
                try:
                    return self._load_on(name, spec, threads, precision), tried, broke
                except EngineMissingError:
                    raise
                except EngineError as e:
                    problem, broke = str(e), True
                except Exception as e:  # a runtime's own exception types
                    text = str(e).strip()
                    problem = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
                    broke = True
            tried.append(f"{name}: {problem}")
            log.info("engine %s: %s not used: %s", spec.name, name, problem)
        self.skipped[spec.name] = tried
        if len(order) == 1:
            why = tried[0].split(": ", 1)[1]
            raise EngineError(f"The model {spec.name} cannot run on {order[0]}: {why}.")
        raise EngineError(
            f"No backend could run the model {spec.name} on device '{self.device}' "
            f"({'; '.join(tried)})."
        )

    def max_batch_of(self, name: str) -> int:
        """The largest batch of a model: engines.batch_max_size, or its engines.batch_sizes."""
        s = self.settings
        return max(1, min(s.batch_max_size, s.batch_sizes.get(name, 1 << 30)))

    def _fix_shapes(self, spec: ModelSpec, engine: Engine) -> None:
        """Give the engine its buckets (fixed shapes) and warm it, as the settings say."""
        s = self.settings
        on_gpu = engine.backend != "ort-cpu"
        if s.fixed_shapes == "off" or (s.fixed_shapes == "auto" and not on_gpu):
            return
        buckets = spec.buckets_for(engine.inputs())
        if buckets is None:
            return
        largest = self.max_batch_of(spec.name)
        for bound in (engine.max_batch, buckets.max_batch):  # a TensorRT profile's, the file's
            if bound is not None:
                largest = min(largest, bound)
        engine.set_buckets(buckets, batch_sizes(largest))
        if s.warm_up == "on" or (s.warm_up == "auto" and on_gpu):
            runs = engine.warm()
            log.info(
                "engine %s: warmed %d shapes in %.2f s",
                spec.name,
                runs,
                engine.shape_stats.warm_seconds,
            )

    def _place(self, spec: ModelSpec, gpu: Engine, threads: int | None) -> Engine:
        """`gpu` or the same model on the CPU, whichever the settings and the times prefer."""
        s = self.settings
        if s.placement == "first":
            if spec.placement == "ort-cpu":
                cpu = self._load_on("ort-cpu", spec, threads)
                self._fix_shapes(spec, cpu)
                gpu.close()
                cpu.placement = "ort-cpu: the model's place (engines.placement: first)"
                return cpu
            gpu.placement = f"{gpu.backend}: first that loaded (engines.placement: first)"
            return gpu
        buckets = spec.buckets_for(gpu.inputs())
        if buckets is None:
            gpu.placement = f"{gpu.backend}: not timed (the model has no fixed shapes)"
            return gpu
        try:
            cpu = self._load_on("ort-cpu", spec, threads)
        except Exception as e:  # the CPU build cannot run it: stay on the GPU
            gpu.placement = f"{gpu.backend}: the CPU could not load it ({e})"
            return gpu
        self._fix_shapes(spec, cpu)
        sizes = sorted({1, self.max_batch_of(spec.name)})
        if gpu.buckets is not None:  # measure within what the GPU engine takes
            sizes = sorted({1, gpu.batch_sizes[-1]})
        try:
            times = {
                e.backend: [per_item_seconds(e, buckets, b) for b in sizes] for e in (gpu, cpu)
            }
        except Exception as e:  # a runtime's error while timing: keep the GPU, say why
            cpu.close()
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            gpu.placement = f"{gpu.backend}: not timed ({text})"
            return gpu
        winner, why = choose_placement(times, sizes)
        keep, drop = (cpu, gpu) if winner == "ort-cpu" else (gpu, cpu)
        drop.close()
        keep.placement = why
        return keep

    def _load_on(
        self, backend: str, spec: ModelSpec, threads: int | None, precision: str | None = None
    ) -> Engine:
        t = self.settings.threads if threads is None else threads
        per_shape = self.settings.session_per_shape
        if backend == "ort-cpu":
            return OnnxEngine(
                spec.path,
                spec.name,
                t,
                [CPU],
                require=CPU,
                backend=backend,
                session_per_shape=per_shape == "on",
            )
        if backend == "ort-cuda":
            providers: list[Any] = [(CUDA, self.cuda_options()), CPU]
            return OnnxEngine(
                spec.path,
                spec.name,
                t,
                providers,
                require=CUDA,
                backend=backend,
                session_per_shape=per_shape != "off",
            )
        if backend == "ort-tensorrt":
            return self._load_ort_trt(spec, t, precision=precision)
        return self._load_trt(spec, precision)

    def cuda_options(self) -> dict[str, Any]:
        """ONNX Runtime CUDA provider options from the settings."""
        s = self.settings
        options: dict[str, Any] = {
            "device_id": 0,
            "cudnn_conv_algo_search": s.cudnn_conv_algo_search,
            "use_tf32": int(s.tf32),
        }
        if s.session_per_shape != "off":
            # many sessions, one shape each: each arena grows to what its shape needs, not
            # to the next power of two
            options["arena_extend_strategy"] = "kSameAsRequested"
        return options

    # -- TensorRT ---------------------------------------------------------------------------

    def profile(self, spec: ModelSpec) -> Profile:
        """The optimisation profile of `spec` for batches up to engines.batch_max_size."""
        return spec.profile(self.settings.batch_max_size, onnx_inputs(spec.path))

    def key(
        self, spec: ModelSpec, runtime: str = "tensorrt", precision: str | None = None
    ) -> EngineKey:
        """The cache key of `spec` on this machine's GPU and TensorRT."""
        gpu = detect_gpu()
        if gpu is None:
            raise BackendUnavailableError(
                "TensorRT engines need an NVIDIA GPU, and none was found."
            )
        version = tensorrt_version()
        if runtime != "tensorrt":
            import onnxruntime as ort

            runtime = f"onnxruntime-{ort.__version__}"
        return EngineKey(
            model=spec.name,
            onnx_sha256=file_sha256(Path(spec.path)),
            tensorrt=version or "ort-bundled",
            gpu=gpu.name,
            compute_capability=gpu.compute_capability,
            precision=precision or self.settings.precision,
            profile=profile_key(self.profile(spec)),
            runtime=runtime,
        )

    def _load_trt(self, spec: ModelSpec, precision: str | None = None) -> Engine:
        from livesense.engines.tensorrt_engine import TensorRTEngine

        key = self.key(spec, precision=precision)
        data = self.cache.load(key)
        if data is None:
            data = self._build_native(spec, key)
        return TensorRTEngine(
            data,
            Path(spec.path),
            name=spec.name,
            precision=key.precision,
            cache=str(self.cache.engine_path(key)),
        )

    def _build_native(self, spec: ModelSpec, key: EngineKey, force: bool = False) -> bytes:
        failure = self.cache.failure(key)
        if failure and not force:
            raise EngineBuildError(
                f"TensorRT failed to build {spec.name} before ({failure.strip()}); delete "
                f"{self.cache.failed_path(key)} to try again."
            )
        if self.settings.missing_engine == "refuse" and not force:
            raise EngineMissingError(
                f"No TensorRT engine for {spec.name} ({key.precision}) is cached in "
                f"{self.cache.root}; run 'livesense engines build --model {spec.name}', or set "
                "engines.missing_engine to 'build'."
            )
        from livesense.engines.engine_builder import EngineBuilder

        with self._build_lock:
            data = self.cache.load(key)
            if data is not None:
                return data
            log.warning(
                "building the TensorRT engine of %s (%s); this takes a while",
                spec.name,
                key.precision,
            )
            builder = EngineBuilder(
                self.settings.workspace_mb, self.cache.timing_cache(), self.settings.builder_level
            )
            calibration = None
            if key.precision == "int8":
                calibration = load_feeds(self.cache.calibration_dir(spec.name), limit=512)
            t0 = time.perf_counter()
            try:
                data = builder.build(
                    Path(spec.path),
                    self.profile(spec),
                    key.precision,
                    calibration=calibration,
                    calibration_cache=self.cache.calibration_cache(spec.name, key.onnx_sha256),
                )
            except EngineBuildError as e:
                if "calibration" not in str(e):  # missing recordings are no build failure
                    self.cache.mark_failed(key, str(e))
                raise
            self.cache.store(key, data, time.perf_counter() - t0)
            return data

    def _load_ort_trt(
        self, spec: ModelSpec, threads: int, build: bool = False, precision: str | None = None
    ) -> Engine:
        s = self.settings
        key = self.key(spec, runtime="onnxruntime", precision=precision)
        folder = self.cache.ort_dir(key)
        cached = folder.is_dir() and any(p.suffix == ".engine" for p in folder.iterdir())
        if not cached and s.missing_engine == "refuse" and not build:
            raise EngineMissingError(
                f"No ONNX Runtime TensorRT engine for {spec.name} is cached in {folder}; run "
                f"'livesense engines build --backend ort-tensorrt --model {spec.name}', or set "
                "engines.missing_engine to 'build'."
            )
        folder.mkdir(parents=True, exist_ok=True)
        profile = self.profile(spec)
        options: dict[str, Any] = {
            "device_id": 0,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(folder),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(folder),
            "trt_max_workspace_size": s.workspace_mb << 20,
            "trt_builder_optimization_level": s.builder_level,
            "trt_fp16_enable": key.precision in ("fp16", "int8"),
            "trt_profile_min_shapes": profile_text(profile, 0),
            "trt_profile_opt_shapes": profile_text(profile, 1),
            "trt_profile_max_shapes": profile_text(profile, 2),
        }
        if key.precision == "int8":
            table = self.cache.calibration_cache(spec.name, key.onnx_sha256)
            if not table.is_file():
                raise EngineBuildError(
                    f"INT8 on ONNX Runtime's TensorRT provider needs the calibration table of "
                    f"{spec.name}; build it first with 'livesense engines build --precision int8 "
                    f"--backend tensorrt --model {spec.name}'."
                )
            shutil.copyfile(table, folder / "calibration.cache")
            options.update(
                trt_int8_enable=True,
                trt_int8_calibration_table_name="calibration.cache",
                trt_int8_use_native_calibration_table=True,
            )
        providers: list[Any] = [(TENSORRT, options), (CUDA, self.cuda_options()), CPU]
        return OnnxEngine(
            spec.path,
            spec.name,
            threads,
            providers,
            require=TENSORRT,
            precision=key.precision,
            cache=str(folder),
            backend="ort-tensorrt",
        )

    def build(
        self,
        spec: ModelSpec,
        backend: str = "tensorrt",
        precision: str | None = None,
        force: bool = False,
    ) -> BuildResult:
        """Build (or find cached) the engine of `spec`: what `livesense engines build` runs."""
        precision = precision or self.settings.precision
        t0 = time.perf_counter()
        problem = backend_problem(backend)
        if problem is not None:
            return BuildResult(spec.name, backend, precision, "failed", None, 0.0, problem)
        try:
            if backend == "tensorrt":
                key = self.key(spec, precision=precision)
                status = "cached"
                if force or self.cache.load(key) is None:
                    self._build_native(spec, key, force=True)
                    status = "built"
                engine = self._load_trt(spec, precision)
                cache = engine.cache
            elif backend == "ort-tensorrt":
                key = self.key(spec, runtime="onnxruntime", precision=precision)
                folder = self.cache.ort_dir(key)
                had = folder.is_dir() and any(folder.glob("*.engine"))
                engine = self._load_ort_trt(
                    spec, self.settings.threads, build=True, precision=precision
                )
                _warm_up(engine, self.profile(spec))
                status = "cached" if had else "built"
                cache = engine.cache
            else:
                return BuildResult(
                    spec.name,
                    backend,
                    precision,
                    "failed",
                    None,
                    0.0,
                    f"{backend} builds no engines (only tensorrt, ort-tensorrt)",
                )
        except EngineError as e:
            return BuildResult(
                spec.name, backend, precision, "failed", None, time.perf_counter() - t0, str(e)
            )
        engine.close()
        return BuildResult(spec.name, backend, precision, status, cache, time.perf_counter() - t0)

    # -- batchers ---------------------------------------------------------------------------

    def batcher(
        self,
        name: str,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        max_batch: int | None = None,
        key: Callable[[Any], Hashable] | None = None,
    ) -> Batcher[Any, Any] | None:
        """The shared batcher of a model (None when engines.batch is off)."""
        s = self.settings
        if not s.batch:
            return None
        with self._lock:
            b = self._batchers.get(name)
            if b is None:
                model = name.split("/")[0].split(":")[0]
                size = min(max_batch or s.batch_max_size, s.batch_sizes.get(model, 1 << 30))
                b = Batcher(
                    name,
                    run_batch,
                    max_batch=max(1, size),
                    max_delay=None
                    if s.batch_max_delay_ms is None
                    else s.batch_max_delay_ms / 1000.0,
                    queue_size=s.batch_queue,
                    stream_queue=s.batch_stream_queue,
                    policy=s.batch_policy,
                    key=key,
                )
                self._batchers[name] = b
            return b

    def batchers(self) -> dict[str, Batcher[Any, Any]]:
        with self._lock:
            return dict(self._batchers)

    def close(self) -> None:
        with self._lock:
            for b in self._batchers.values():
                b.close()
            self._batchers.clear()
            for e in self._engines.values():
                e.close()
            self._engines.clear()


def _warm_up(engine: Engine, profile: Profile) -> None:
    """One run at the profile's opt shapes, so ORT's TensorRT provider builds its engine now."""
    import numpy as np

    feeds = {}
    for info in engine.inputs():
        shape = profile.get(info.name, ((), (), ()))[1] or tuple(
            d if isinstance(d, int) and d > 0 else 1 for d in info.shape
        )
        dtype = np.int64 if "int64" in info.dtype else np.float32
        feeds[info.name] = np.zeros(shape, dtype)
    engine.run(feeds)


_shared: EngineFactory | None = None
_shared_lock = threading.Lock()


def configure_engines(settings: EngineSettings, device: str = "auto") -> EngineFactory:
    """Set the process's engine factory (call once at start, before models load)."""
    global _shared
    with _shared_lock:
        old = _shared
        if old is not None and old.settings == settings and old.device == device:
            return old
        _shared = EngineFactory(settings, device)
        return _shared


def shared_factory() -> EngineFactory:
    """The process's engine factory (default settings until configure_engines is called)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EngineFactory()
        return _shared
