"""Small shared helpers: atomic file writes (``io``) and run provenance (``provenance``)."""
