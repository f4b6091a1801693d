"""Exit statuses a child process gives ``diffq serve`` so it can say why the child stopped."""

from __future__ import annotations

# sysexits' EX_CONFIG: `diffq worker` could not listen on its probe port (DIFFQ_WORKER_PORT).
PROBE_PORT_EXIT = 78
