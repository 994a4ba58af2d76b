"""bench/tiny_models.py: the per-backend load time and RAM figures come from code that runs in CI."""

from __future__ import annotations

import re

from bench.tiny_models import main


def test_one_backend_is_built_saved_loaded_and_run_in_its_own_process(capsys):
    assert main(["--backend", "ltx"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("ltx "))
    assert re.search(r"32x32,  9 frames, 10 steps +\d+ MB$", row), row
    assert lines[-1] == "tiny models: 1 of 1 backends built, saved, loaded and ran"
