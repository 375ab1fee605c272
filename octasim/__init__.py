"""octasim: simulation-based segmentation of blood vessels in 3D OCTA and microscopy scans.

The Python API in five names (micrometres throughout; arrays indexed (i, j, k), depth = k)::

    import octasim
    model = octasim.load_model()                     # bundled model; or a name, or runs/NAME/best.pt
    scan = octasim.read_scan("stack.tif")            # NIfTI or TIFF: .data (i, j, k), .spacing_um
    prob, mask = octasim.segment_volume(scan.data, scan.spacing_um, model)
    octasim.write_like("stack_mask.tif", mask, scan) # same layout and calibration as the scan

``prepare_model(model)`` builds the network once, for many volumes: ``segment_volume(..., model=net)``.
The names are imported on first use, so ``import octasim`` stays fast (no torch until needed).
"""

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {"load_model": "octasim.models", "read_scan": "octasim.scan", "write_like": "octasim.scan",
        "segment_volume": "octasim.segment", "segment_files": "octasim.segment", "prepare_model": "octasim.segment"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'octasim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
