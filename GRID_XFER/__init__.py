"""GRID_XFER: nightly raw-data transfer over a PiCaS-style CouchDB token pool."""

from GRID_XFER.errors import Code, GridXferError

__version__ = "0.1.0"
__all__ = ["Code", "GridXferError", "__version__"]
