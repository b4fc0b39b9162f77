"""Warnings that libraries raise on import, not about anything a user does, silenced
before they are imported (``mmssl/__init__.py`` imports this module first).

PyTorch Geometric 2.8 calls ``torch.jit.script`` when it is imported (its pooling
selectors), and this torch answers with a FutureWarning: every command would print it
at start-up. Only that message, from ``torch.jit``, is filtered.
"""

import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning,
                        module=r"torch\.jit\._script")
