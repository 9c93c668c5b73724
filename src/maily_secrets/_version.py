"""The one place the version is written: ``pyproject.toml`` reads it (setuptools'
dynamic ``attr``), ``maily_secrets.__version__`` and ``mailyctl --version`` print it."""

__version__ = "0.1.0"
