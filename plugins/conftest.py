"""Run each example plugin's tests only where that plugin is installed (the README's install
command and CI install both); say so instead of failing with import errors."""

from importlib import metadata

import pytest

PLUGINS = {"ddpmctl-sde": "ddpmctl-sde", "ddpmctl-shapes": "ddpmctl-shapes"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for folder, dist in PLUGINS.items():
            if f"/plugins/{folder}/" in str(item.path):
                try:
                    metadata.version(dist)
                except metadata.PackageNotFoundError:
                    item.add_marker(pytest.mark.skip(reason=f"{dist} is not installed: pip install -e plugins/{folder}"))
