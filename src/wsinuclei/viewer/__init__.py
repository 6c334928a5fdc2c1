"""The browser viewer (``wsinuclei view``): a loopback HTTP server (``server.py``) and the page it serves
(``static/``: OpenSeadragon, vendored from npm with its licence, and the nuclei overlay)."""

from .server import ViewerServer, ViewerSource, resolve_source, serve

__all__ = ["ViewerServer", "ViewerSource", "resolve_source", "serve"]
