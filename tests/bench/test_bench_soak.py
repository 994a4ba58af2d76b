"""bench/soak.py: the verdict's arithmetic, the log reader, and a short soak through a real daemon."""

from __future__ import annotations

import json

from bench.soak import LogTail, Sample, main, verdict

MB = 2**20


def samples(rss_mb: list[float], fds: list[int], threads: list[int]) -> list[Sample]:
    return [Sample(25 * i, float(i), (int(r * MB), f, t), (int(r * MB), f, t))
            for i, (r, f, t) in enumerate(zip(rss_mb, fds, threads))]


def test_flat_floors_pass_and_each_kind_of_leak_fails():
    steady = samples([400, 450, 450.1, 450.0, 450.2], [11, 13, 15, 15, 15], [10, 15, 16, 15, 16])
    assert verdict(steady, warmup=25)[0]
    rss_leak = samples([400, 450, 450.5, 451.0, 451.5], [11, 13, 13, 13, 13], [10, 15, 15, 15, 15])  # 2 MB/100
    fd_leak = samples([400, 450, 450, 450, 450], [11, 13, 38, 63, 88], [10, 15, 15, 15, 15])  # one per job
    thread_leak = samples([400, 450, 450, 450, 450], [11, 13, 13, 13, 13], [10, 15, 18, 21, 24])
    for leaking in (rss_leak, fd_leak, thread_leak):
        assert not verdict(leaking, warmup=25)[0]
    assert "+2.00 MB per 100 jobs" in verdict(rss_leak, warmup=25)[1]


def test_the_log_is_read_as_it_grows_and_a_line_being_written_waits(tmp_path):
    log = tmp_path / "i2vd.log"
    tail = LogTail(log)
    assert tail.new_events() == []  # no log yet
    log.write_text(json.dumps({"event": "a"}) + "\n" + '{"event": ')
    assert tail.new_events() == [{"event": "a"}]
    with log.open("a") as f:
        f.write('"b"}\n')
    assert tail.new_events() == [{"event": "b"}]
    assert tail.new_events() == []


def test_a_short_soak_prints_its_samples_and_verdict(capsys):
    """Too few jobs for a meaningful verdict; what counts is that the whole run works."""
    assert main(["--jobs", "20", "--batch", "5", "--every", "5", "--warmup", "10"]) in (0, 1)
    lines = capsys.readouterr().out.splitlines()
    first = lines.index(next(line for line in lines if line.split()[:2] == ["jobs", "s"])) + 1
    jobs = [int(line.split()[0]) for line in lines[first:lines.index(next(x for x in lines if x.startswith("rate")))]]
    assert jobs[0] == 0 and jobs[-1] >= 20 and jobs == sorted(set(jobs)) and len(jobs) >= 4  # at 0, 5+, 10+, ...
    assert lines[-1].startswith("after 10 jobs of warm-up: RSS floor ")
