"""`make demo`: make a sample clip, ingest it, print a few searches and answers."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from rich.console import Console

from livesense.config import load_settings
from livesense.errors import LivesenseError
from livesense.pipeline.stream_pipeline import StreamPipeline
from livesense.sample import DEMO_SCENES, make_sample
from livesense.service import open_services

SEARCHES = ["Rome", "platform 9", "when does the cafe close"]
QUESTIONS = ["When does the train to Rome leave?", "Until when is the cafe open?"]


async def demo(root: Path) -> None:
    con = Console()
    clip = root / "sample.mp4"
    memory = root / "memory"
    shutil.rmtree(memory, ignore_errors=True)
    seconds = make_sample(clip)
    con.print(
        f"[bold]sample clip[/] {clip} ({seconds:.0f} s): two title cards and two spoken sentences"
    )
    for scene in DEMO_SCENES:
        con.print(f"  shows {' / '.join(scene.caption)!r}, says {scene.speech!r}")
    settings = load_settings(memory=memory)
    services = open_services(settings)
    store, perception = services.store, services.perception
    assert perception is not None
    await asyncio.to_thread(perception.load)
    status = await StreamPipeline("sample", str(clip), settings, store, perception).run()
    if status.error:
        raise LivesenseError(status.error)
    con.print(f"[green]ingested[/] {status.snippets} snippets into {memory}\n")
    for q in SEARCHES:
        hits = store.search(q, top_k=2)
        con.print(f"[bold]search[/] {q!r}")
        for h in hits:
            ev = h.evidence
            con.print(
                f"  {h.start:5.1f}–{h.end:5.1f} s  score {h.score:.2f}  said {ev.transcript!r}"
                f"  shown {ev.ocr_texts()}"
            )
    for q in QUESTIONS:
        con.print(f"\n[bold]ask[/] {q!r}\n  {store.ask(q).text}")
    store.close()
    con.print(f"\ntry: .venv/bin/livesense search 'platform 9' --memory {memory}")


def main() -> None:
    try:
        asyncio.run(demo(Path("demo-memory")))
    except LivesenseError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
