"""The clusters of a diagnosis as a table node; selecting a row jumps the slice views to the cluster's peak.

Run after :func:`addiagnosis.mrml.scene.push_results` with the same result (its ``reading`` holds the clusters the
engine found, :mod:`addiagnosis.explain.clusters`)::

    table = cluster_table(scene, input_node, result)   # one row per cluster, largest share first
    jump_to_cluster(scene, table, row)                 # every slice view through that cluster's peak

Re-running updates the same table; a failure leaves the scene as it was. Imports Slicer's ``vtk`` and the scene
bridge, not torch.
"""

from __future__ import annotations

import vtk

from addiagnosis.mrml.nodes import SceneError
from addiagnosis.mrml.scene import ROLE, node_ref
from addiagnosis.mrml.tables import output_table

REF_CLUSTERS = "ADDiagnosis.clusters"
PEAK_COLUMNS = ("Peak R", "Peak A", "Peak S")  # world RAS mm of the peak: where a row jumps to
COLUMNS = (  # (name, vtk array class, description)
    ("Cluster", vtk.vtkIntArray, "clusters of relevance above the display threshold, largest share first"),
    ("Share %", vtk.vtkDoubleArray, "share of the map's positive relevance in the cluster"),
    ("Volume mL", vtk.vtkDoubleArray, "cluster volume"),
    ("Peak", vtk.vtkDoubleArray, "largest relevance in the cluster"),
    ("Peak region", vtk.vtkStringArray, "atlas region at the peak"),
    ("Regions", vtk.vtkStringArray, "atlas regions the cluster overlaps (share of its voxels)"),
    *((c, vtk.vtkDoubleArray, "peak position, world RAS mm") for c in PEAK_COLUMNS),
)


def clusters_of(result) -> list[dict]:
    """The clusters of a DiagnosisResult (or of a report.json dict)."""
    reading = getattr(result, "reading", None)
    if reading is None and isinstance(result, dict):
        reading = result
    return list((reading or {}).get("clusters") or [])


def cluster_table(scene, input_node, result):
    """A table node ``"<input> clusters"`` under the input, one row per cluster of ``result``."""
    clusters = clusters_of(result)
    return output_table(scene, input_node, REF_CLUSTERS, f"{input_node.GetName()} clusters",
                        lambda table: _fill(table, clusters))


def _fill(table, clusters: list[dict]) -> None:
    table.SetAttribute(ROLE, "clusters")
    t = table.GetTable()
    t.Initialize()
    arrays = {}
    for name, kind, _ in COLUMNS:
        arrays[name] = kind()
        arrays[name].SetName(name)
    for c in clusters:
        regions = ", ".join(f"{r['region']} {100 * r['overlap']:.0f}%" for r in c.get("regions", [])[:3])
        values = {"Cluster": int(c["index"]), "Share %": 100.0 * float(c["share"]),
                  "Volume mL": float(c["volume_ml"]), "Peak": float(c["peak"]),
                  "Peak region": c.get("peak_region") or "", "Regions": regions}
        values.update(zip(PEAK_COLUMNS, (float(v) for v in c["peak_ras"])))
        for name, _, _ in COLUMNS:
            arrays[name].InsertNextValue(values[name])
    for name, _, description in COLUMNS:
        t.AddColumn(arrays[name])
        table.SetColumnDescription(name, description)
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)
    table.Modified()


def peak_of_row(table, row: int) -> tuple[float, float, float]:
    """The peak (world RAS mm) of a row of a cluster table."""
    t = table.GetTable()
    if not 0 <= int(row) < t.GetNumberOfRows():
        raise SceneError(f"no cluster in row {row} (the table has {t.GetNumberOfRows()})")
    return tuple(float(t.GetColumnByName(c).GetValue(int(row))) for c in PEAK_COLUMNS)


def jump_to(scene, ras) -> None:
    """Every slice view through ``ras`` (offsets moved, views not re-centred: the user's zoom and pan stay)."""
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(nodes.GetNumberOfItems()):
        nodes.GetItemAsObject(i).JumpSliceByOffsetting(*[float(v) for v in ras])
    crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is not None:
        crosshair.SetCrosshairRAS(*[float(v) for v in ras])


def jump_to_cluster(scene, table, row: int) -> tuple[float, float, float]:
    """Select a row: every slice view jumps to that cluster's peak; returns the peak (world RAS mm)."""
    ras = peak_of_row(table, row)
    jump_to(scene, ras)
    return ras


def cluster_table_node(input_node):
    """The cluster table of ``input_node`` (None before :func:`cluster_table`)."""
    return node_ref(input_node, REF_CLUSTERS)



def row_text(table, row: int) -> str:
    """A row in one line: "1. Left Hippocampus: 12.3 % in 4.5 mL" (the module's cluster list)."""
    t = table.GetTable()
    region = t.GetColumnByName("Peak region").GetValue(int(row)) or "outside the atlas regions"
    return (f"{t.GetColumnByName('Cluster').GetValue(int(row))}. {region}: "
            f"{t.GetColumnByName('Share %').GetValue(int(row)):.1f} % in "
            f"{t.GetColumnByName('Volume mL').GetValue(int(row)):.1f} mL")
