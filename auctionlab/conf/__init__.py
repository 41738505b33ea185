"""auctionlab's config groups, shipped as package data and found on Hydra's search path.

Users add their own options (an experiment, a mechanism, an env...) in a directory of their
own and pass it with ``--config-dir DIR`` or ``hydra.searchpath=[file://DIR]``.
"""

from pathlib import Path

#: Hydra's name for this package on the config search path.
CONFIG_MODULE = "auctionlab.conf"
#: The package's own config directory (files in the installed package).
CONF_DIR = Path(__file__).resolve().parent
