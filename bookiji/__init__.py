"""Bookiji core: availability, holds, dual authorization and atomic booking commit."""

__version__ = "0.1.0"
