"""The names ``geohf dataset``'s parser offers, without importing pandas or datasets.

:mod:`.layouts` (and :mod:`.bluemarble`), :mod:`.sources` and :mod:`.splits` define the things these name;
a test checks they agree.
"""

LAYOUT_NAMES = ("lost-and-found", "grid-folders", "imagefolder", "bluemarble")
SOURCES = ("osv5m", "im2gps3k", "yfcc4k", "yfcc26k", "mp16", "table")
SPLIT_BY = ("location", "block")
