"""Stand-in for PythonQt's ``ctk`` module (see qt.py): the CTK widgets the .ui file and Slicer's Python use."""

import qt


class ctkCollapsibleButton(qt.QAbstractButton):
    SIGNALS = ("contentsCollapsed",)

    def __init__(self, parent=None):
        super().__init__("", parent)
        self._collapsed = False

    @property
    def collapsed(self):
        return self._collapsed

    @collapsed.setter
    def collapsed(self, value):
        if bool(value) != self._collapsed:
            self._collapsed = bool(value)
            self.contentsCollapsed.emit(self._collapsed)


class ctkSliderWidget(qt.QWidget):
    """A double slider + spin box: the value is clamped to [minimum, maximum] and rounded to ``decimals``."""

    SIGNALS = ("valueChanged", "valueIsChanging")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._min, self._max, self._value, self.decimals, self.singleStep, self.suffix = 0.0, 99.0, 0.0, 2, 1.0, ""

    def _set(self, value):
        value = round(min(max(float(value), self._min), self._max), int(self.decimals))
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, v):
        self._set(v)

    def setValue(self, v):
        self._set(v)

    @property
    def minimum(self):
        return self._min

    @minimum.setter
    def minimum(self, v):
        self._min = float(v)
        self._max = max(self._max, self._min)
        self._set(self._value)

    @property
    def maximum(self):
        return self._max

    @maximum.setter
    def maximum(self, v):
        self._max = float(v)
        self._min = min(self._min, self._max)
        self._set(self._value)

    def setRange(self, lo, hi):
        self.minimum, self.maximum = lo, hi


class ctkMessageBox(qt.QMessageBox):
    pass


class ctkWidgetsUtils:
    @staticmethod
    def grabWidget(widget):
        return None


def __getattr__(name):  # other ctk classes Slicer's code names (type checks in parameterNodeWrapper)
    if name.startswith("ctk"):
        cls = type(name, (qt.QWidget,), {})
        globals()[name] = cls
        return cls
    raise AttributeError(name)
