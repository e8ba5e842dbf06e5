"""asyncssh, imported once for the transport's modules."""

import logging
import warnings

from cryptography.utils import CryptographyDeprecationWarning

__all__ = ["asyncssh"]

with warnings.catch_warnings():
    # asyncssh names DSA keys, which cryptography deprecates; DSA is never used here.
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    import asyncssh

# asyncssh logs every channel at INFO: a line per HTTP connection. Its warnings still show.
logging.getLogger("asyncssh").setLevel(logging.WARNING)
