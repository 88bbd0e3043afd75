"""scikit-learn estimators with ntkit's exact infinite-width kernels: NTKRegressor, NTKClassifier, and the
InfiniteWidthKernel adapter for GaussianProcessRegressor / KernelRidge."""

from ._kernel import InfiniteWidthKernel
from ._models import NTKClassifier, NTKRegressor

__all__ = ["InfiniteWidthKernel", "NTKClassifier", "NTKRegressor"]
