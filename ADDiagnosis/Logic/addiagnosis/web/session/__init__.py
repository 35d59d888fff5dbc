"""One browser session of the web app: its own scene, views, uploads and diagnosis, in a worker process.

The gateway starts it as ``python -m addiagnosis.web.session --port P --folder DIR ...`` (:mod:`.__main__`) on
a loopback port and proxies the page to it. :mod:`.state` names the page state, :mod:`.logic` holds the
session's actions (load, diagnose, display), :mod:`.views` the trame-slicer views of its scene and :mod:`.ui`
the page. Results go into a slicer-core scene through :func:`addiagnosis.mrml.scene.push_results`: the same
nodes, colour node, thresholds and volume rendering as the Slicer module. Nothing is imported here: trame,
VTK and torch load only in the worker.
"""
