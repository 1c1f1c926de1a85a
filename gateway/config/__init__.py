"""Configuration: models (``models``), loading with file/key/line errors (``loader``), the
matter catalog and routing (``catalog``)."""
