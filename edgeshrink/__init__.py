"""edgeshrink: shrink AI models for one named small device and measure them there."""

__version__ = "0.1.0"
