"""Read what the other commands wrote into a run directory and turn it into the report's five
sections (the parts of a section: `candorlm.report.section`). Nothing is computed here that a
command did not measure, except the GPU-profile estimate of the Cost section (the ledger's own
`estimate`, labelled with its assumption) and a new probe of the MFU denominator when the run's
was taken beside other work (`candorlm.ledger.hardware`)."""

from __future__ import annotations

from typing import Any

from candorlm.config import RunConfig
from candorlm.report.compute import compute_section, cost_section, read_curve
from candorlm.report.generalization import generalization_section
from candorlm.report.interpretability import interpretability_section
from candorlm.report.privacy import privacy_section
from candorlm.rundir import RunDir

__all__ = ["read_curve", "sections"]


def sections(run: RunDir, config: RunConfig) -> list[dict[str, Any]]:
    """Cost, Compute, Interpretability, Privacy, Generalization, in that order."""
    return [cost_section(run, config), compute_section(run), interpretability_section(run),
            privacy_section(run, config), generalization_section(run)]
