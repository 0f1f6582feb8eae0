"""No core dumps of the daemon: a manager's memory holds the cluster's CA key, the Raft data
key and the unlock key, and a core file would write them to disk in clear.

``PR_SET_DUMPABLE 0`` stops the kernel from writing a core (and, for a daemon not running as
root, makes its ``/proc/<pid>`` files root-owned, so other processes of the same user cannot read
its memory); ``RLIMIT_CORE`` 0 says the same to anything that only looks at the limit.
"""

from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def forbid_core_dumps() -> None:
    """Best effort: a platform without prctl gets a warning, not a daemon that will not start."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as e:
        log.warning("could not set the core file size limit to 0: %s", e)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")
    except (OSError, AttributeError) as e:
        log.warning("could not mark the process non-dumpable: %s", e)
