"""The limitations report card: `candorlm report RUN` writes RUN/report.html (self-contained),
RUN/report.json (validated against `candorlm.report.schema.SCHEMA`) and RUN/report.md, with one
section per limit: Cost, Compute, Interpretability, Privacy, Generalization."""

from candorlm.report.build import report

__all__ = ["report"]
