"""Stand-ins for the qMRML widget classes (see qt.py); the node combo box follows the real MRML scene."""

import qt


class qMRMLWidget(qt.QWidget):
    SIGNALS = ("mrmlSceneChanged",)


class qSlicerWidget(qMRMLWidget):
    pass


class qMRMLNodeComboBox(qMRMLWidget):
    """Holds a current node of the real scene; forgets it when the node leaves the scene (close, delete)."""

    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeActivated", "nodeAdded")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes, self.noneEnabled, self.addEnabled, self.removeEnabled = [], True, False, False
        self.showChildNodeTypes, self._node, self._scene, self._tag = True, None, None, None

    def setMRMLScene(self, scene):
        if self._scene is not None and self._tag is not None:
            self._scene.RemoveObserver(self._tag)
        self._scene = scene
        if scene is not None:
            self._tag = scene.AddObserver(scene.NodeRemovedEvent, self._onRemoved)

    def _onRemoved(self, caller, event):
        if self._node is not None and self._node.GetScene() is None:
            self.setCurrentNode(None)

    def currentNode(self):
        return self._node

    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""

    def setCurrentNode(self, node):
        if node is not None and not any(node.IsA(t) for t in self.nodeTypes):
            return
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(self.currentNodeID())

    def setCurrentNodeID(self, node_id):
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)


class qMRMLSpinBox(qt.QDoubleSpinBox):
    pass


class qMRMLSliderWidget(qMRMLWidget):
    pass


class qMRMLRangeWidget(qMRMLWidget):
    pass
