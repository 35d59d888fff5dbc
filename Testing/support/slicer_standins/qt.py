"""Stand-in for PythonQt's ``qt`` module: only what ADDiagnosis.py and Slicer's own Python layer touch.

NOT Qt. Widgets are plain Python objects with the properties, signals (connect/emit, PythonQt's
``obj.connect("signal(args)", slot)`` too) and children the code reads; ``QUiLoader`` builds them from
the real ``.ui`` file (names, classes, properties such as ``SlicerParameterName``, ``connections``).
Dialogs and message boxes never show: they are recorded in ``RECORD`` and answer from ``ANSWERS``.
``QTimer`` never fires by itself: a test calls ``tick()`` (its own event loop).
"""

import builtins
import inspect
import os
import xml.etree.ElementTree as ET

RECORD = {"messages": [], "dialogs": [], "cursor": 0}
ANSWERS = {"messageBox": []}  # queued exec_() results for message boxes (default: Ok)


class _Enum:
    pass


class Qt(_Enum):
    WaitCursor = 16
    ToolTipRole = 3
    DisplayRole = 0
    UserRole = 32
    ShiftModifier = 0x02000000
    Vertical = 2
    Horizontal = 1
    TextSelectableByMouse = 1
    ToolButtonTextUnderIcon = 3


class Signal:
    """A bound signal: slots get as many of the emitted arguments as they accept (as PythonQt does)."""

    def __init__(self, owner=None):
        self._owner, self._slots = owner, []

    def connect(self, slot):
        self._slots.append(slot)
        return True

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
        else:
            self._slots = [s for s in self._slots if s != slot]

    def emit(self, *args):
        if self._owner is not None and getattr(self._owner, "_blocked", False):
            return
        for slot in list(self._slots):
            slot(*args[:_arity(slot, len(args))])


def _arity(fn, n):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return n
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return n
    return min(n, sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)))


class QObject:
    SIGNALS = ("destroyed",)

    def __init__(self, parent=None):
        self._children, self._parent, self._props, self._blocked = [], None, {}, False
        self.objectName = ""
        for cls in type(self).__mro__:
            for s in getattr(cls, "SIGNALS", ()):
                if s not in self.__dict__:
                    self.__dict__[s] = Signal(self)
        if parent is not None:
            self.setParent(parent)

    # PythonQt: obj.connect("clicked(bool)", slot)
    def connect(self, signature, slot=None, *rest):
        getattr(self, signature.split("(")[0]).connect(slot)
        return True

    def disconnect(self, signature, slot=None):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def blockSignals(self, block):
        old, self._blocked = self._blocked, bool(block)
        return old

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def findChildren(self, cls=None):
        out = []
        for c in self._children:
            if cls is None or isinstance(c, cls):
                out.append(c)
            out += c.findChildren(cls)
        return out

    def property(self, name):
        return self._props.get(name)

    def setProperty(self, name, value):
        self._props[name] = value

    name = builtins.property(lambda self: self.objectName)

    def className(self):
        return type(self).__name__

    def deleteLater(self):
        pass

    def isWidgetType(self):
        return False


class QWidget(QObject):
    SIGNALS = ()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.enabled, self.visible, self.toolTip, self.text, self._layout = True, True, "", "", None
        self.windowTitle = ""

    def isWidgetType(self):
        return True

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        self._layout = layout
        layout._widget = self
        for w in layout._pending:
            w.setParent(self)
        layout._pending = []

    def setEnabled(self, on):
        self.enabled = bool(on)

    def setVisible(self, on):
        self.visible = bool(on)

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def close(self):
        self.visible = False
        return True

    def setToolTip(self, text):
        self.toolTip = text

    def setMRMLScene(self, scene):  # qMRMLWidget and subclasses
        self._scene = scene
        if "mrmlSceneChanged" in self.__dict__:
            self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return getattr(self, "_scene", None)


class QLayout(QObject):
    def __init__(self, parent=None):
        super().__init__(None)
        self._widget, self._pending = None, []
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        if self._widget is not None:
            widget.setParent(self._widget)
        else:
            self._pending.append(widget)

    def addRow(self, *widgets):
        for w in widgets:
            if isinstance(w, QWidget):
                self.addWidget(w)

    def addLayout(self, layout, *args):
        pass

    def addStretch(self, *args):
        pass

    def setContentsMargins(self, *args):
        pass


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QFrame(QWidget):
    pass


class QLabel(QWidget):
    def __init__(self, text="", parent=None):
        if isinstance(text, QWidget):
            text, parent = "", text
        super().__init__(parent)
        self.text, self.wordWrap = text, False


class QAbstractButton(QWidget):
    SIGNALS = ("clicked", "toggled", "pressed", "released")

    def __init__(self, text="", parent=None):
        super().__init__(parent)
        self.text, self.checkable, self.checked = text, False, False

    def click(self):
        """A user's click: nothing happens on a disabled button (as in Qt)."""
        if not self.enabled:
            return False
        if self.checkable:
            self.checked = not self.checked
            self.toggled.emit(self.checked)
        self.clicked.emit(self.checked)
        return True


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    """Checkable: a click toggles it and emits stateChanged (0 unchecked, 2 checked), as Qt's does."""

    SIGNALS = ("stateChanged",)

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.checkable = True

    def click(self):
        clicked = super().click()
        if clicked:
            self.stateChanged.emit(2 if self.checked else 0)
        return clicked


class QProgressBar(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.value, self.minimum, self.maximum, self.format = 0, 0, 100, ""


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items, self._index = [], -1

    @property
    def count(self):
        return len(self._items)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        self.setCurrentIndex(index)

    def setCurrentIndex(self, index):
        index = int(index) if 0 <= int(index) < len(self._items) else -1
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    @property
    def currentText(self):
        return self._items[self._index][0] if self._index >= 0 else ""

    def setCurrentText(self, text):
        i = self.findText(text)
        if i >= 0:
            self.setCurrentIndex(i)

    def addItem(self, text, userData=None):
        self._items.append([str(text), {Qt.UserRole: userData}])
        if self._index < 0:
            self.setCurrentIndex(0)

    def addItems(self, texts):
        for t in texts:
            self.addItem(t)

    def clear(self):
        self._items = []
        if self._index != -1:
            self._index = -1
            self.currentIndexChanged.emit(-1)
            self.currentTextChanged.emit("")

    def findText(self, text):
        for i, (t, _) in enumerate(self._items):
            if t == text:
                return i
        return -1

    def itemText(self, i):
        return self._items[i][0]

    def setItemData(self, i, value, role=Qt.UserRole):
        self._items[i][1][role] = value

    def itemData(self, i, role=Qt.UserRole):
        return self._items[i][1].get(role)


class QSlider(QWidget):
    SIGNALS = ("valueChanged",)


class QSpinBox(QSlider):
    pass


class QDoubleSpinBox(QSlider):
    pass


class QLineEdit(QWidget):
    SIGNALS = ("textChanged",)


class QTextEdit(QWidget):
    SIGNALS = ("textChanged",)


class QDialog(QWidget):
    def exec_(self):
        RECORD["dialogs"].append(self.windowTitle or type(self).__name__)
        return 0

    exec = exec_


class QMessageBox(QDialog):
    NoButton, Ok, Cancel, Yes, No, Retry, Close = 0, 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = self.detailedText = ""
        self.icon = self.standardButtons = 0

    def exec_(self):
        answer = ANSWERS["messageBox"].pop(0) if ANSWERS["messageBox"] else QMessageBox.Ok
        RECORD["messages"].append({"title": self.windowTitle.strip(), "text": self.text, "icon": self.icon,
                                   "detailedText": self.detailedText, "answer": answer})
        return answer

    exec = exec_


class QTimer(QObject):
    """Fires only when a test's event loop calls ``tick()`` (never on its own)."""

    SIGNALS = ("timeout",)
    SINGLE_SHOTS = []

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval, self.singleShot_, self._active = 0, False, False

    def setInterval(self, ms):
        self.interval = int(ms)

    def start(self, ms=None):
        if ms is not None:
            self.interval = int(ms)
        self._active = True

    def stop(self):
        self._active = False

    def isActive(self):
        return self._active

    def tick(self):
        if self._active:
            self.timeout.emit()

    @staticmethod
    def singleShot(ms, slot):
        QTimer.SINGLE_SHOTS.append((ms, slot))


class QSettings:
    _store = {}

    def __init__(self, *args):
        pass

    def value(self, key, default=None):
        return QSettings._store.get(key, default)

    def setValue(self, key, value):
        QSettings._store[key] = value

    def contains(self, key):
        return key in QSettings._store


class QIcon:
    def __init__(self, path=""):
        self.path = path


class QUrl:
    TolerantMode = 0

    def __init__(self, url=""):
        self._url = url

    @staticmethod
    def fromLocalFile(path):
        return QUrl("file://" + os.path.abspath(path).replace(os.sep, "/"))

    def toString(self):
        return self._url


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.exists(self.path)

    def open(self, mode):
        return self.exists()

    def remove(self):
        if os.path.exists(self.path):
            os.remove(self.path)
            return True
        return False

    def fileName(self):
        return self.path


class QDir:
    def mkpath(self, path):
        os.makedirs(path, exist_ok=True)
        return True


class QFileDialog:
    ANSWERS = []

    @staticmethod
    def getOpenFileName(*args):
        RECORD["dialogs"].append("QFileDialog")
        return QFileDialog.ANSWERS.pop(0) if QFileDialog.ANSWERS else ""


class QInputDialog:
    ANSWERS = []

    @staticmethod
    def getText(*args):
        RECORD["dialogs"].append("QInputDialog")
        return QInputDialog.ANSWERS.pop(0) if QInputDialog.ANSWERS else ""


class QSizePolicy:
    Preferred, Expanding, Fixed = 5, 7, 0

    def __init__(self, *args):
        pass


class QAction(QObject):
    SIGNALS = ("triggered",)

    def __init__(self, text="", parent=None):
        super().__init__(parent if isinstance(parent, QObject) else None)
        self.text = text


class QMenu(QWidget):
    pass


class QColor:
    def __init__(self, *args):
        self.args = args


class QEventLoop:
    ExcludeUserInputEvents = 1


class QEvent:
    KeyPress = 6


class QSize:
    def __init__(self, w=0, h=0):
        self._w, self._h = w, h

    def width(self):
        return self._w

    def height(self):
        return self._h


# ---------------------------------------------------------------------------------------- .ui loading
def _value(prop):
    child = list(prop)[0] if len(prop) else None
    if child is None:
        return None
    tag = child.tag
    if tag in ("string", "set", "enum", "cstring"):
        return child.text or ""
    if tag == "bool":
        return child.text == "true"
    if tag == "number":
        return int(child.text)
    if tag == "double":
        return float(child.text)
    if tag == "stringlist":
        return [s.text or "" for s in child.iter("string")]
    return None


class QUiLoader:
    """Builds stand-in widgets from a Qt Designer file: every named widget with its class, its
    properties (declared ones as attributes, ``stdset="0"`` dynamic ones through ``property()``),
    its parent, and the file's signal/slot connections."""

    def load(self, qfile, parent=None):
        import ctk
        import slicer

        root = ET.parse(qfile.fileName()).getroot()
        made = {}

        def cls_for(name):
            for mod in (ctk, slicer, __import__(__name__)):
                c = getattr(mod, name, None)
                if isinstance(c, type):
                    return c
            raise RuntimeError(f"stand-in qt: no widget class {name}")

        def build(elem, parent_widget):
            w = cls_for(elem.get("class"))()
            w.objectName = elem.get("name") or ""
            if parent_widget is not None:
                w.setParent(parent_widget)
            made[w.objectName] = w
            for prop in elem.findall("property"):
                value = _value(prop)
                if prop.get("stdset") == "0":
                    w.setProperty(prop.get("name"), value)
                elif prop.get("name") not in ("geometry", "sizeHint", "orientation", "textInteractionFlags"):
                    setattr(w, prop.get("name"), value)
            for sub in _child_widgets(elem):
                build(sub, w)
            return w

        top = build(root.find("widget"), parent)
        for c in root.iter("connection"):
            sender, receiver = made[c.findtext("sender")], made[c.findtext("receiver")]
            slot = getattr(receiver, c.findtext("slot").split("(")[0])
            sender.connect(c.findtext("signal"), slot)
        return top


def _child_widgets(elem):
    """Widgets under ``elem`` through layouts/items, not nested inside another widget."""
    out = []
    for child in elem:
        if child.tag == "widget":
            out.append(child)
        elif child.tag in ("layout", "item"):
            out += _child_widgets(child)
    return out


def __getattr__(name):  # any other Q* class the Slicer code names: a plain widget type
    if name.startswith("Q"):
        cls = type(name, (QWidget,), {})
        globals()[name] = cls
        return cls
    raise AttributeError(name)
