"""A real `i2vd run` with the tiny model: the video with its tags, poster, preview and interpolation."""

from __future__ import annotations

import json

import PIL.Image

from support.daemons import daemon_env, wait_for

from support.files import drop_pair, probe
from pipeline.video import read_tags


def test_a_job_publishes_a_tagged_interpolated_video_with_poster_and_preview(dirs, run_daemon):
    outputs = dirs["outputs"]
    daemon = run_daemon(daemon_env(dirs, I2VD_KEEP_RAW_VIDEO="true"))
    daemon.wait_ready()
    drop_pair(dirs["inbox"], "tide", prompt="the tide comes in;\nfoam = white # 泡", seed=11, interpolate=2)

    metadata_path = wait_for(lambda: next(iter(outputs.glob("tide_*.json")), None), what="the job's metadata")
    assert daemon.stop() == 0
    base = metadata_path.name.removesuffix(".json")
    assert sorted(p.name.removeprefix(base) for p in outputs.iterdir()) == [
        ".jpg", ".json", ".mp4", ".preview.webp", ".raw.mp4"]  # one set, no temporary files

    video = outputs / f"{base}.mp4"
    assert probe(video) == (16, 16.0, (32, 32))  # 8 generated frames at 8 fps, interpolated by 2
    assert probe(outputs / f"{base}.raw.mp4") == (8, 8.0, (32, 32))
    tags = read_tags(video)
    assert tags["title"] == "tide" and tags["description"] == "the tide comes in;\nfoam = white # 泡"
    story = json.loads(tags["comment"])
    assert story["seed"] == 11 and story["model"] == "tiny" and story["interpolation"]["factor"] == 2

    metadata = json.loads(metadata_path.read_text())
    assert (metadata["frames"], metadata["fps"]) == (16, 16)
    assert metadata["params"]["interpolate"] == 2
    assert metadata["interpolation"]["method"] == "ffmpeg-minterpolate"
    assert metadata["interpolation"]["source_frames"] == 8
    assert metadata["extras"] == {"poster": f"{base}.jpg", "preview": f"{base}.preview.webp",
                                  "raw_video": f"{base}.raw.mp4"}

    with PIL.Image.open(outputs / f"{base}.jpg") as poster:
        assert poster.format == "JPEG" and poster.size == (32, 32)
    with PIL.Image.open(outputs / f"{base}.preview.webp") as preview:
        assert preview.format == "WEBP" and preview.size == (32, 32)
        assert preview.is_animated and preview.n_frames == 8
