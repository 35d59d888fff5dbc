"""Diagnosis in a separate, long-lived process, the way Slicer's AI extensions run inference.

Inside 3D Slicer, PythonQt keeps the GIL in the main thread while Qt's event loop runs, so a Python thread doing
inference is starved. The module therefore starts ``PythonSlicer -m addiagnosis.worker`` once, keeps it (torch
imported, the model loaded) and sends it one task per Diagnose; Slicer's main thread only moves data in and out
of MRML.

- :mod:`~addiagnosis.worker.protocol`: the messages (one dataclass per kind, an enum of kinds, JSON lines) and
  the job folder (voxels and IJK->RAS in exactly, relevance and result fields out);
- :mod:`~addiagnosis.worker.process`: start a process in its own process group / session (no console window on
  Windows), read its pipes without blocking, end the whole tree (``PythonSlicer`` is a launcher that starts the
  real Python as its child: killing the launcher alone leaves that child running);
- :mod:`~addiagnosis.worker.client`: the caller's side (:class:`~addiagnosis.worker.client.WorkerProcess`,
  :class:`~addiagnosis.worker.client.WorkerJob`), polled from the GUI's timer, never blocking;
- :mod:`~addiagnosis.worker.server`: the worker's side (``python -m addiagnosis.worker``): a task loop with a
  watchdog on its parent and an idle time limit.

Nothing here imports torch or Slicer at import time: the GUI process uses it before torch is installed.
"""
