"""Analyses the NTK theory makes possible: spectra, eigen-direction convergence, alignment, bounds, width."""

from .alignment import LabelAlignment, label_alignment
from .bounds import ComplexityMeasures, generalization_bound
from .convergence import EigenConvergence, eigen_convergence
from .spectrum import Spectrum, spectrum
from .width import KernelDrift, WidthStudy, fit_power_law, kernel_drift, width_study

__all__ = [
    "ComplexityMeasures",
    "EigenConvergence",
    "KernelDrift",
    "LabelAlignment",
    "Spectrum",
    "WidthStudy",
    "eigen_convergence",
    "fit_power_law",
    "generalization_bound",
    "kernel_drift",
    "label_alignment",
    "spectrum",
    "width_study",
]
