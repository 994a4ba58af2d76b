"""Tiny models on the CPU: build, save, load and job times, and peak host RAM, per backend.

Each backend runs in a fresh process (peak RSS is per process): import the model stack, build the
tiny pipeline (`build_tiny`), save it with save_pretrained, load it back through the backend's
`load()` (from_pretrained, as the daemon does), then run the tiny job twice (32x32, the smallest
valid frame count of at least 8, 10 steps, one torch thread). These are smoke-test models: the
figures say what a test or an offline demo costs, nothing about the real models.

    .venv/bin/python -m bench.tiny_models                 # every backend
    .venv/bin/python -m bench.tiny_models --backend wan   # one
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.harness import REPO, footer, header

CHILD = r"""
import json, resource, sys, tempfile, time
t0 = time.perf_counter()
import numpy as np, PIL.Image, torch
torch.set_num_threads(1)
from pipeline.backends import RULES, get_backend
from pipeline.backends.base import MemoryOptions
from pipeline.runtime import Placement, quiet_libraries
from pipeline.params import GenerationParams
quiet_libraries()
name = sys.argv[1]
backend, rules = get_backend(name), RULES[name]
t1 = time.perf_counter()
pipe = backend.build_tiny()
t2 = time.perf_counter()
with tempfile.TemporaryDirectory() as folder:
    pipe.save_pretrained(folder)
    del pipe
    t3 = time.perf_counter()
    pipe = backend.load(folder, Placement(torch.device("cpu"), torch.float32))
    t4 = time.perf_counter()
frames = 9 if name == "cogvideox" else next(n for n in range(8, 64) if rules.frames.valid(n))
params = GenerationParams(prompt="a cat on the sea", width=32, height=32, num_frames=frames, fps=8, steps=10,
                          guidance_scale=rules.presets["standard"].guidance_scale, seed=0)
image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
jobs = []
for _ in range(2):
    start = time.perf_counter()
    out = backend.generate(pipe, image, params, lambda _p: None, MemoryOptions())
    jobs.append(time.perf_counter() - start)
assert out.shape == (frames, 32, 32, 3), out.shape
print(json.dumps(dict(imports=t1 - t0, build=t2 - t1, save=t3 - t2, load=t4 - t3, first_job=jobs[0],
                      job=jobs[1], frames=frames, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def main(argv: list[str] | None = None) -> int:
    from pipeline.backends import RULES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs="+", choices=list(RULES), default=list(RULES))
    args = parser.parse_args(argv)
    header("Tiny models on the CPU: build, save, load, job, peak RSS (one process per backend)", "bench.tiny_models")
    print(f"{'backend':<11}{'imports':>9}{'build':>8}{'save':>8}{'load':>8}{'1st job':>9}{'job':>8}  job shape"
          f"{'':<14}{'peak RSS':>9}")
    failed = []
    for name in args.backend:
        done = subprocess.run([sys.executable, "-c", CHILD, name], cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            failed.append(name)
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            print(f"{name:<11}failed: {last}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:<11}{r['imports']:>8.2f}s{r['build']:>7.2f}s{r['save']:>7.2f}s{r['load']:>7.2f}s"
              f"{r['first_job']:>8.2f}s{r['job']:>7.2f}s  32x32, {r['frames']:>2} frames, 10 steps"
              f"{r['rss_mb']:>7.0f} MB", flush=True)
    footer(f"tiny models: {len(args.backend) - len(failed)} of {len(args.backend)} backends built, saved, "
           f"loaded and ran" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
