"""Grafana annotations marking each sweep step, when Grafana is reachable (a one-line note when not).

Connection and credentials are the snapshot exporter's (loadgen.grafana.snapshot), so one setting
serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The tag on every step annotation; the dashboards' "Sweep steps (loadgen)" layer queries exactly this
# tag (loadgen.grafana.dashboards imports it), beside the run id and the concurrency.
STEP_ANNOTATION_TAG = "loadgen"


@dataclass
class Annotator:
    url: str | None
    note: str
    api: Any = None

    @classmethod
    def connect(cls, url: str | None) -> Annotator:
        if not url:
            return cls(None, "Grafana annotations: no Grafana URL configured; steps not annotated")
        try:
            from loadgen.grafana.snapshot import grafana_api, grafana_reachable

            api = grafana_api(url)  # imports grafana-client, which a bare GPU box may lack
        except ImportError as error:
            return cls(url, f"Grafana annotations: the Grafana helper is not available ({error}); steps not annotated")
        why = grafana_reachable(api)
        if why is not None:
            return cls(url, f"Grafana annotations: Grafana at {url} not reachable ({why}); steps not annotated")
        return cls(url, f"Grafana annotations: each step annotated on {url}", api)

    def step(self, run_id: str, concurrency: float, start: float, end: float, text: str) -> None:
        if self.api is None:
            return
        try:
            self.api.annotations.add_annotation(time_from=int(start * 1000), time_to=int(end * 1000),
                                                tags=[STEP_ANNOTATION_TAG, run_id, f"c{concurrency}"], text=text)
        except Exception as error:  # grafana-client raises its own and niquests' errors alike
            self.api = None
            self.note = f"Grafana annotations: stopped after an error ({type(error).__name__})"
