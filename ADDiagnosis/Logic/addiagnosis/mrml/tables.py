"""Output tables of a diagnosis (per region, per cluster): one table node per input and kind, under the input
in the subject hierarchy, updated in place on a re-run, and transactional like every push."""

from __future__ import annotations

from addiagnosis.mrml.scene import SceneUndo, place_under, ref_or_new


def output_table(scene, input_node, reference: str, name: str, fill):
    """The input's table node for ``reference`` (made as ``name`` if new), filled by ``fill(table)``; on any
    failure the scene is left as it was."""
    undo = SceneUndo(scene)
    try:
        table = ref_or_new(scene, input_node, reference, "vtkMRMLTableNode", name)
        fill(table)
        place_under(scene, input_node, [table])
        undo.set_reference(input_node, reference, table)
    except Exception:
        undo.rollback()
        raise
    return table
