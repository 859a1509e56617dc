"""Builds TensorRT engines from ONNX files: one optimisation profile, FP32/FP16/INT8.

INT8 uses TensorRT's entropy calibrator on model inputs recorded from real streams (see
calibration_recorder.py); the calibration table is kept next to the engines and reused, so
a rebuild (a new TensorRT, another GPU) does not need the recordings again. A timing cache
shared by all builds makes rebuilds faster.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from livesense.engines.calibration_recorder import fit
from livesense.engines.engine import EngineBuildError
from livesense.engines.gpu import check, cudart, import_tensorrt
from livesense.engines.model_spec import Profile

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")


class EngineBuilder:
    """TensorRT's builder with livesense's defaults; `build` returns the serialised engine."""

    def __init__(
        self, workspace_mb: int = 2048, timing_cache: Path | None = None, level: int = 3
    ) -> None:
        self.trt = import_tensorrt()
        self.workspace = int(workspace_mb) << 20
        self.level = level
        self.timing_cache = timing_cache
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)

    def build(
        self,
        onnx_path: Path,
        profile: Profile,
        precision: str = "fp16",
        *,
        calibration: list[dict[str, np.ndarray]] | None = None,
        calibration_cache: Path | None = None,
    ) -> bytes:
        """Parse `onnx_path`, apply `profile`, build at `precision`; raises EngineBuildError."""
        trt = self.trt
        if precision not in PRECISIONS:
            raise EngineBuildError(f"Unknown precision '{precision}' (fp32, fp16 or int8).")
        t0 = time.perf_counter()
        builder = trt.Builder(self.logger)
        network = builder.create_network(_network_flags(trt))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineBuildError(
                f"TensorRT cannot parse {Path(onnx_path).name}: {errors or 'unknown error'}."
            )
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if hasattr(config, "builder_optimization_level"):
            config.builder_optimization_level = self.level
        opt = builder.create_optimization_profile()
        opt_shapes = self._apply_profile(network, opt, profile)
        config.add_optimization_profile(opt)

        if precision in ("fp16", "int8"):
            flag = getattr(trt.BuilderFlag, "FP16", None)
            if flag is None:
                raise EngineBuildError(
                    f"TensorRT {trt.__version__} has no FP16 builder flag; build with fp32."
                )
            config.set_flag(flag)
        calibrator = None
        if precision == "int8":
            calibrator = self._int8(
                builder, network, config, opt_shapes, calibration, calibration_cache
            )
        timing = self._load_timing_cache(config)

        serialized = builder.build_serialized_network(network, config)
        if calibrator is not None:
            calibrator.free()
        if serialized is None:
            raise EngineBuildError(
                f"TensorRT could not build {Path(onnx_path).name} at {precision} (see the "
                "TensorRT log above)."
            )
        if timing is not None:
            self._save_timing_cache(config)
        log.info(
            "built %s at %s in %.1f s", Path(onnx_path).name, precision, time.perf_counter() - t0
        )
        return bytes(serialized)

    def _apply_profile(
        self, network: Any, opt: Any, profile: Profile
    ) -> dict[str, tuple[int, ...]]:
        """Set min/opt/max of every dynamic input; returns the opt shape of every input."""
        opt_shapes: dict[str, tuple[int, ...]] = {}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            name = tensor.name
            dims = tuple(int(d) for d in tensor.shape)
            if name in profile:
                lo, mid, hi = profile[name]
                if not (len(lo) == len(mid) == len(hi) == len(dims)):
                    raise EngineBuildError(
                        f"The profile of input {name} has rank {len(lo)}, the model {len(dims)}."
                    )
                opt.set_shape(name, lo, mid, hi)
                opt_shapes[name] = tuple(mid)
            elif any(d < 0 for d in dims):
                raise EngineBuildError(
                    f"Input {name} has dynamic axes {dims} that the profile does not cover."
                )
            else:
                opt_shapes[name] = dims
        return opt_shapes

    def _int8(
        self,
        builder: Any,
        network: Any,
        config: Any,
        opt_shapes: dict[str, tuple[int, ...]],
        calibration: list[dict[str, np.ndarray]] | None,
        cache: Path | None,
    ) -> _Calibrator:
        trt = self.trt
        if not getattr(builder, "platform_has_fast_int8", True):
            raise EngineBuildError("This GPU has no fast INT8; build with fp16.")
        if not hasattr(trt, "IInt8EntropyCalibrator2"):
            raise EngineBuildError(
                f"TensorRT {trt.__version__} has no INT8 calibrator; build with fp16, or "
                "quantise the ONNX file (Q/DQ) beforehand."
            )
        has_cache = cache is not None and cache.is_file()
        if not calibration and not has_cache:
            raise EngineBuildError(
                "INT8 needs calibration data recorded from a real stream: ingest one with "
                "engines.record_calibration=true first (LIVESENSE_ENGINES__RECORD_CALIBRATION=1)."
            )
        batches = [
            {n: fit(feeds[n], shape) for n, shape in opt_shapes.items() if n in feeds}
            for feeds in (calibration or [])
        ]
        batches = [b for b in batches if len(b) == len(opt_shapes)]
        config.set_flag(trt.BuilderFlag.INT8)
        calib_profile = builder.create_optimization_profile()
        for name, shape in opt_shapes.items():
            calib_profile.set_shape(name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
        calibrator = _make_calibrator(trt, batches, cache)
        config.int8_calibrator = calibrator
        return calibrator

    def _load_timing_cache(self, config: Any) -> Any:
        if self.timing_cache is None:
            return None
        data = self.timing_cache.read_bytes() if self.timing_cache.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=True)
        return cache

    def _save_timing_cache(self, config: Any) -> None:
        assert self.timing_cache is not None
        try:
            data = bytes(config.get_timing_cache().serialize())
            self.timing_cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.timing_cache.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(self.timing_cache)
        except Exception as e:  # a timing cache is an optimisation only
            log.warning("TensorRT timing cache not saved: %s", e)


def _network_flags(trt: Any) -> int:
    major = int(str(trt.__version__).split(".")[0])
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if major < 10 and explicit is not None:
        return 1 << int(explicit)
    return 0


class _Calibrator:
    """What EngineBuilder needs of the calibrator: TensorRT's interface plus free()."""

    def free(self) -> None: ...


def _make_calibrator(
    trt: Any, batches: list[dict[str, np.ndarray]], cache: Path | None
) -> _Calibrator:
    """An IInt8EntropyCalibrator2 feeding `batches` from device buffers (cuda-python)."""
    rt = cudart()
    h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

        def get_batch_size(self) -> int:
            return 1  # explicit-batch networks: the batch is in the shapes

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(batches):
                return None
            feeds = batches[self.index]
            self.index += 1
            pointers = []
            for name in names:
                arr = np.ascontiguousarray(feeds[name])
                ptr, size = self.buffers.get(name, (0, 0))
                if size < arr.nbytes:
                    if ptr:
                        rt.cudaFree(ptr)
                    ptr = int(check(rt.cudaMalloc(max(1, arr.nbytes)), "cudaMalloc"))
                    self.buffers[name] = (ptr, arr.nbytes)
                check(rt.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, h2d), "calibration copy")
                pointers.append(ptr)
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            if cache is not None and cache.is_file():
                log.info("INT8: reusing the calibration table %s", cache)
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is None:
                return
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(data))

        def free(self) -> None:
            for ptr, _ in self.buffers.values():
                rt.cudaFree(ptr)
            self.buffers.clear()

    return Calibrator()  # type: ignore[no-any-return]
