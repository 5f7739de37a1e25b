"""``python -m autolab.agents.cli``: same as the ``autolab`` console script."""

from autolab.agents.cli.app import main

main()
