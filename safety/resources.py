"""Offline resources for TextAttack and NLTK: everything comes from this package, never the network.

- NLTK reads `safety/data/nltk/` (WordNet 3.0 and the Snowball English stop list, built by
  `scripts/build_nltk_data.py`, licences beside them). `nltk.download` is replaced by a function
  that only looks locally: some TextAttack pieces call it on construction (WordSwapWordNet asks for
  "omw-1.4", multilingual WordNet, which English synonyms do not need).
- TextAttack's first import runs a post-install step that calls `nltk.download` six times; Candor
  writes the marker that step leaves behind (`post_install_check_3` in TextAttack's cache folder)
  first, so it never runs.

TextAttack's transformations and augmenters draw from Python's and NumPy's global random
generators: `seeded(seed)` fixes both for a block and puts them back afterwards.

Import TextAttack only through `textattack()` here, and only where attacks or augmenters are used:
it takes seconds, and `candor serve` and `candor chat` do not need it.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import tempfile
from pathlib import Path

NLTK_DATA = Path(__file__).resolve().parent / "data" / "nltk"
POST_INSTALL_MARKER = "post_install_check_3"  # textattack/shared/utils/install.py, 0.3.x
_TA_ENV = ("TA_CACHE_DIR", "TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def _local_only(info_or_id=None, *args, **kwargs) -> bool:
    """Stands in for `nltk.download`: True if the resource is in a local NLTK data folder, else False
    (what nltk.download returns when it fails), without touching the network."""
    import nltk

    name = getattr(info_or_id, "id", info_or_id)
    for path in (f"{sub}/{name}{ext}" for sub in ("corpora", "tokenizers", "taggers", "help") for ext in ("", ".zip")):
        try:
            nltk.data.find(path)
            return True
        except LookupError:
            continue
    logging.getLogger(__name__).debug("NLTK resource %r is not shipped; not downloading it (offline)", name)
    return False


def use_offline_nltk() -> None:
    import nltk
    import nltk.downloader

    if str(NLTK_DATA) not in nltk.data.path:
        nltk.data.path.insert(0, str(NLTK_DATA))
    nltk.download = nltk.downloader.download = _local_only


def _write_marker(cache_dir: str) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    Path(cache_dir, POST_INSTALL_MARKER).touch()


@functools.cache
def textattack():
    """The `textattack` module, imported offline (see the module docstring)."""
    use_offline_nltk()
    cache_dir = os.environ.get("TA_CACHE_DIR", os.path.expanduser("~/.cache/textattack"))
    saved = None
    try:
        _write_marker(cache_dir)
    except OSError:  # no writable home: a private cache folder, and undo what TA_CACHE_DIR does to the env
        saved = {k: os.environ.get(k) for k in _TA_ENV}
        os.environ["TA_CACHE_DIR"] = tempfile.mkdtemp(prefix="candor-textattack-")
        _write_marker(os.environ["TA_CACHE_DIR"])
    try:
        import textattack as ta
    finally:
        for k, v in (saved or {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ta.shared.utils.logger.addFilter(_quiet)
    return ta


def _quiet(record: logging.LogRecord) -> bool:
    """TextAttack warns "Unknown if model of class ... compatible with goal function" for any model it
    does not know by class; Candor's wrapper is made for its classification goals."""
    return not record.getMessage().startswith("Unknown if model of class")


@contextlib.contextmanager
def seeded(seed: int):
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
