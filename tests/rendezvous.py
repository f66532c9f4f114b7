"""Where the processes of a distributed test meet: a file of their own, never a TCP port.

A free port found by binding to 0 is free only until another test (in another worker of
``pytest -n 2``) takes it; a file in the test's own directory cannot be taken.
"""

from __future__ import annotations

import os
import uuid

__all__ = ["rendezvous"]


def rendezvous(directory: str) -> str:
    """A fresh ``file://`` init method in ``directory`` (the file must not exist yet)."""
    return "file://" + os.path.join(os.fspath(directory), f"rendezvous-{uuid.uuid4().hex}")
