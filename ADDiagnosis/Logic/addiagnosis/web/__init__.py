"""The web app: ``addiagnosis web`` serves 3D Slicer's views of a diagnosis to a browser (trame-slicer).

Two parts, each small:

- :mod:`addiagnosis.web.gateway`: the one listening port (loopback by default). It gives every browser
  session its own worker process, proxies the page and its websocket to it, takes uploads (size-limited,
  stored under server-generated names in the session's own folder), serves the session's downloads,
  deletes a session's folder when the session ends or its retention time is up, and writes the access log
  (timestamps and outcomes only: no IP addresses, no file names or contents).
- :mod:`addiagnosis.web.session`: one browser session. A slicer-core scene (:class:`SlicerRuntime`), the
  same scene code as the Slicer module (:func:`addiagnosis.mrml.scene.push_results`), trame-slicer's slice and
  3D views streamed to the page, and the engine (:func:`addiagnosis.engine.get_diagnoser`) run in a worker
  thread so the page stays live while it works.

Nothing here is imported by the engine, and trame is imported only when the server starts.
"""

from __future__ import annotations

DEFAULT_PORT = 8080
DEFAULT_MAX_UPLOAD_MB = 256
