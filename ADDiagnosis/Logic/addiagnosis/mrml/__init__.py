"""The MRML scene bridge: the only engine code that imports slicer (Volume <-> nodes, push, views, runtime)."""
