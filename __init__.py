"""The root of a geohf clone, not the package (that is ``geohf/geohf``).

Python imports this file as ``geohf`` only when it runs from the folder that holds the clone and
the clone's folder is named ``geohf``: then the real package would be shadowed and, with it,
everything ``import geohf`` sets up (transformers would ask to trust remote code instead of
using geohf's registered classes). Say so in one line, with the fix, rather than half-work.

pytest collects this folder as a plain folder (tests/conftest.py): as a package it imported this file with the
folder above the clone first on ``sys.path``, where it shadowed the package in every process spawned later.
"""

if __name__ == "geohf":
    import os as _os

    _clone = _os.path.dirname(_os.path.abspath(__file__))
    raise ImportError(
        f"'import geohf' found the geohf clone folder {_clone} (the current folder holds it), not the package: "
        f"cd {_clone} and run again, or install it with pip install -e {_clone}"
    )
