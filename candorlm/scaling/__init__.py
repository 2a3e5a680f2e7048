"""The scaling view: `candorlm sweep` trains several sizes on the same data and seed, fits a power
law of validation loss against training FLOPs and against parameters, and plots both."""

from candorlm.scaling.fit import PowerLaw, fit_power_law
from candorlm.scaling.sweep import sweep

__all__ = ["PowerLaw", "fit_power_law", "sweep"]
