"""asyncopt: asynchronous parallel and distributed stochastic optimization with PyTorch."""

__version__ = "0.1.0"
