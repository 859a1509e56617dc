"""The engine benchmark (the same as `livesense bench engines`), saved for the README.

    .venv/bin/python -m bench.engines [--seconds 3] [--backend auto] [--device auto]

Writes bench/results/engines.json and prints the Markdown table of the run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from livesense.config import load_settings
from livesense.engines.engine_bench import EngineBench, machine, markdown
from livesense.engines.engine_factory import EngineFactory
from livesense.engines.model_registry import pipeline_specs

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="wall time per figure")
    parser.add_argument("--backend", default=None, help="auto, tensorrt, ort-cuda, ort-cpu…")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda")
    parser.add_argument("--config", default=None, help="YAML settings file")
    parser.add_argument("--model", action="append", default=None, help="only this model")
    args = parser.parse_args()
    settings = load_settings(
        args.config, **{"engines.backend": args.backend, "device": args.device}
    )
    bench = EngineBench(EngineFactory(settings.engines, settings.device), args.seconds)
    results = [r.as_json() for r in bench.run(pipeline_specs(settings, args.model), print)]
    where = machine()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "engines.json"
    out.write_text(
        json.dumps({"models": results, "machine": where, "errors": bench.errors}, indent=1)
    )
    print(markdown(results, where))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
