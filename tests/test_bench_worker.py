"""The worker section of the benchmark: real Kafka, Redis and `jarvis worker`, tiny sizes.

Figures at these sizes mean nothing; what is checked is that the section runs end to
end, every execution it starts completes, its targets are judged, its table is on the
page, and no process it started is left behind.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `bench` is a folder of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import run  # noqa: E402


def _children() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == os.getpid() and stat[0] != "Z":
                found.add(int(entry.name))
    return found


def test_the_worker_section_runs_and_is_judged(tmp_path: Path) -> None:
    before = _children()
    assert run.main(["--only", "worker", "--scale", "0.001", "--repeats", "2",
                     "--warmup", "0", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "performance.json").read_text())
    worker = results["worker"]
    assert worker["latency"]["count"] >= 20 and worker["latency"]["p50_ms"] > 0
    throughput = worker["throughput"]
    assert throughput["count"] >= 50 and throughput["per_second"] > 0
    # The median of the rounds (of two: the faster), each round's rate kept.
    assert len(throughput["runs"]) == 2 and throughput["per_second"] == max(throughput["runs"])
    assert worker["trace"]["events"] >= 10_000 and worker["sink"]["per_second"] > 0
    judged = {t["name"]: t["status"] for t in results["targets"]}
    kafka = [name for name in judged if "Kafka" in name or "worker" in name]
    assert len(kafka) == 3 and all(judged[name] in ("PASS", "FAIL") for name in kafka)
    page = (tmp_path / "performance.md").read_text()
    assert "## Worker" in page and "not measured yet" not in page
    assert "median of 2 rounds" in page
    assert _children() <= before
