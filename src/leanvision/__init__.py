"""leanvision: image classifiers that are accurate and fast at once, measured on your own hardware."""

__version__ = "0.1.0"
