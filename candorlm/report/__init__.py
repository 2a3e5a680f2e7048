"""The limitations report card: `candorlm report RUN` writes RUN/report.html (self-contained),
RUN/report.json (validated against `candorlm.report.schema.SCHEMA`) and RUN/report.md, with one
section per limit: Cost, Compute, Interpretability, Privacy, Generalization."""

from typing import Any

__all__ = ["report"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that `candorlm finetune` can print a task table (report.tasks)
    # without the report extra's page renderer (jinja2)
    if name == "report":
        from candorlm.report.build import report

        return report
    raise AttributeError(name)
