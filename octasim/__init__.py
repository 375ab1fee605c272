"""octasim: simulation-based segmentation of blood vessels in 3D OCTA and microscopy scans."""

__version__ = "0.1.0"
