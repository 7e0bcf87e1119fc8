"""Where the project's shipped files are: rule files and the example street's registry.

The gateway is installed from its source tree (``pip install -e .``), so the shipped
``rules/`` and ``config/`` folders sit beside the packages. ``EDGE_HOME`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    home = os.environ.get("EDGE_HOME")
    return Path(home) if home else Path(__file__).resolve().parent.parent


def default_rules() -> Path:
    return project_root() / "rules"


def default_registry() -> Path:
    return project_root() / "config" / "devices.csv"


def default_categories() -> Path:
    return project_root() / "config" / "categories.csv"


def default_models() -> Path:
    return project_root() / "config" / "models"


def default_codecs() -> Path:
    return project_root() / "config" / "codecs"
