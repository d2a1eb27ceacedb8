"""docs/operations.md keeps up with the code: every setting and every metric field."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from jarvis.settings import WorkerSettings
from jarvis.worker.metrics import Gauges, WorkerMetrics, metric_lines

OPERATIONS = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def variables(model: type[BaseModel], prefix: str = "JARVIS_") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names += variables(kind, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_has_a_row() -> None:
    text = OPERATIONS.read_text()
    rows = set(re.findall(r"^\| `(JARVIS_[A-Z0-9_]+)` \|", text, re.M))
    assert rows == set(variables(WorkerSettings))


def test_every_metric_field_is_described() -> None:
    metrics = WorkerMetrics()
    metrics.run_ended("completed", 1.0)
    lines = metric_lines("w", metrics, Gauges(0, 1, False, 0, 0), events_per_second=0,
                         uptime=0, timestamp_ns=0)
    text = OPERATIONS.read_text()
    for line in lines:
        fields = line.split(" ")[1]
        for field in fields.split(","):
            assert f"| `{field.split('=')[0]}` |" in text
