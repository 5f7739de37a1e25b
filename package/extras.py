"""Optional dependencies (the extras of ``pyproject.toml``): checked before they are needed.

The core install coordinates (planner, reporter, a worker launching HF Jobs, status,
sql...); training, charts and Trackio are extras. A command that needs one checks for
it first, so a missing extra is one line naming it, never an ``ImportError`` deep
inside::

    autolab: error: autolab report needs matplotlib: pip install 'autolab[report]'

Checking is :func:`importlib.util.find_spec`: nothing is imported.
"""

from __future__ import annotations

from importlib.util import find_spec

from autolab.protocol.errors import AutoLabError


class MissingExtra(AutoLabError):
    """A command needs a module that only an extra installs.

    Attributes:
        module: the missing module.
        extra: the extra that installs it.
    """

    def __init__(self, command: str, module: str, extra: str) -> None:
        super().__init__(f"{command} needs {module}: pip install 'autolab[{extra}]'")
        self.module = module
        self.extra = extra


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import; a broken __spec__
        return False


def require(command: str, extra: str, *modules: str) -> None:
    """Check that ``command`` can import each of ``modules``, which ``extra`` installs.

    Raises:
        MissingExtra: the first module that is not installed (exit code 1).
    """
    for module in modules:
        if not installed(module):
            raise MissingExtra(command, module, extra)
