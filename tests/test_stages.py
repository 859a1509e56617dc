"""The pipeline's stage contract: stages run alone through the harness (snippets in,
features out), shed levels follow the lag, stream states move only forward."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livesense.config import PerceptionSettings
from livesense.engines.faces import FaceDetector
from livesense.pipeline.audio import AudioPerception
from livesense.pipeline.stage_harness import run_stage
from livesense.pipeline.stages import ShedLevel
from livesense.pipeline.stream_pipeline import StreamStatus
from livesense.pipeline.stream_state import StreamState
from livesense.pipeline.vision import VisionPerception
from livesense.records import AUDIO_RATE, Snippet
from tests.test_vision import draw_face, snippet, solid


def test_vision_stage_hands_each_snippet_on_with_its_features() -> None:
    red, blue = solid((200, 40, 40)), solid((40, 40, 200))  # red to blue: a scene cut
    for picture in (red, blue):
        draw_face(picture, 320, 190, 70)
    snippets = [snippet(0, [red] * 3), snippet(1, [blue] * 3), snippet(2, [blue] * 3)]
    stage = VisionPerception(PerceptionSettings(ocr=False), faces=FaceDetector())
    levels = [ShedLevel.NONE, ShedLevel.HEAVY, ShedLevel.NONE]

    out = run_stage(stage, snippets, shed=levels)

    assert [s.index for s, _ in out] == [0, 1, 2]
    (_, f0), (_, f1), (_, f2) = out
    assert f0.faces == 1 and f0.skipped == [] and f0.keyframe is not None
    assert f1.skipped == ["faces"] and f1.faces == 0 and f1.keyframe is not None
    assert f1.scene_change and not f2.scene_change and f2.faces == 1
    with pytest.raises(ValueError, match="2 shed levels for 3 snippets"):
        run_stage(stage, snippets, shed=levels[:2])


def test_audio_stage_hands_every_snippet_on_once_in_order() -> None:
    n = 2 * AUDIO_RATE
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / AUDIO_RATE)).astype(np.float32)
    quiet = np.zeros(n, np.float32)
    snippets = [
        Snippet("s", i, 2.0 * i, 2.0 * i + 2.0, audio=a) for i, a in enumerate([quiet, tone, quiet])
    ]
    stage = AudioPerception(PerceptionSettings(asr=False, events=False), live=False)

    out = run_stage(stage, snippets)

    assert [s.index for s, _ in out] == [0, 1, 2]
    loud = [f.loudness_db for _, f in out]
    assert loud[1] > loud[0] + 40 and loud[1] > loud[2] + 40


def test_shed_levels_follow_the_lag() -> None:
    levels = [ShedLevel.for_lag(lag, 2.0) for lag in (0.0, 2.0, 2.1, 6.0, 6.1, 60.0)]
    assert levels == [ShedLevel.NONE] * 2 + [ShedLevel.LIGHT] * 2 + [ShedLevel.HEAVY] * 2
    assert ShedLevel.HEAVY >= 1 and f"shed{int(ShedLevel.HEAVY)}" == "shed2"  # the metric label


def test_stream_states_move_only_forward_and_read_as_before() -> None:
    status = StreamStatus("cam", "cam.mp4")
    status.move(StreamState.RUNNING)
    status.move(StreamState.DONE)
    with pytest.raises(ValueError, match="from done to running"):
        status.move(StreamState.RUNNING)
    assert status.state == "done" and not status.state.active
    assert json.loads(json.dumps(status.to_json()))["state"] == "done"
    assert StreamState.STARTING.can_become(StreamState.ERROR)
    assert not StreamState.ERROR.can_become(StreamState.DONE)
