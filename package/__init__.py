"""AutoLab: a Git-native distributed research protocol.

The package's code lives in ``autolab.protocol``, ``autolab.agents`` and
``autolab.scoreboard`` (directories ``protocol/``, ``agents/``, ``scoreboard/`` of the
repository, mapped into this namespace by ``setup.py``). This module holds only what
belongs to the package as a whole, and imports nothing: ``__version__`` is the one
source of the version (``pyproject.toml`` reads it, ``autolab --version`` prints it).
"""

__version__ = "0.1.0"
