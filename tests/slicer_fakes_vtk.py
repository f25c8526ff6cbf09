"""Recording fakes of the VTK objects AnomalyReview touches (see slicer_fakes.py)."""
from __future__ import annotations

import re

import numpy as np

VTK_TYPES = {"uint8": 3, "int16": 4, "int32": 6, "float32": 10, "float64": 11}


def norm_signal(s: str) -> str:
    return re.sub(r"\s+", "", s)


class Fake:
    SLICER_CLASS = None

    def __init__(self):
        object.__setattr__(self, "calls", [])

    def _rec(self, name, *args):
        self.calls.append((name, args))

    def called(self, name):
        return [a for n, a in self.calls if n == name]


# ----------------------------------------------------------------------------- VTK

class vtkObject(Fake):
    SLICER_CLASS = "vtkObject"

    def __init__(self):
        super().__init__()
        self._observers, self._next_tag = {}, 1

    def AddObserver(self, event, callback, priority=0.0):
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        self._observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag):
        self._observers.pop(tag, None)

    def InvokeEvent(self, event, data=None):
        for ev, cb in list(self._observers.values()):
            if ev == event:
                cb(self, event)

    def Modified(self):
        self._rec("Modified")

    def GetClassName(self):
        return self.SLICER_CLASS

    def IsA(self, name):
        return any(getattr(c, "SLICER_CLASS", None) == name for c in type(self).__mro__)


class vtkMatrix4x4(vtkObject):
    SLICER_CLASS = "vtkMatrix4x4"

    def __init__(self):
        super().__init__()
        self.m = np.eye(4)

    def GetElement(self, r, c):
        return float(self.m[r, c])

    def SetElement(self, r, c, v):
        self.m[r, c] = v


class vtkDataArray(vtkObject):
    SLICER_CLASS = "vtkDataArray"

    def __init__(self):
        super().__init__()
        self.name, self.values = None, []

    def SetName(self, name):
        self.name = name

    def GetName(self):
        return self.name

    def InsertNextValue(self, v):
        self.values.append(v)

    def GetValue(self, i):
        return self.values[i]

    def GetNumberOfTuples(self):
        return len(self.values)


class vtkFloatArray(vtkDataArray):
    SLICER_CLASS = "vtkFloatArray"


class vtkIdTypeArray(vtkDataArray):
    SLICER_CLASS = "vtkIdTypeArray"


class vtkStringArray(vtkObject):
    SLICER_CLASS = "vtkStringArray"

    def __init__(self):
        super().__init__()
        self.values = []

    def InsertNextValue(self, v):
        self.values.append(v)

    def GetValue(self, i):
        return self.values[i]

    def GetNumberOfValues(self):
        return len(self.values)


class vtkCollection(vtkObject):
    SLICER_CLASS = "vtkCollection"

    def __init__(self):
        super().__init__()
        self.items = []

    def AddItem(self, item):
        self.items.append(item)

    def GetNumberOfItems(self):
        return len(self.items)

    def GetItemAsObject(self, i):
        return self.items[i]


class vtkTable(vtkObject):
    SLICER_CLASS = "vtkTable"

    def __init__(self):
        super().__init__()
        self.columns = []

    def AddColumn(self, c):
        self.columns.append(c)

    def GetNumberOfColumns(self):
        return len(self.columns)

    def GetColumn(self, i):
        return self.columns[i]


class vtkImageData(vtkObject):
    SLICER_CLASS = "vtkImageData"

    def __init__(self, array):
        super().__init__()
        self.array = array

    def GetScalarType(self):
        return VTK_TYPES[self.array.dtype.name]

    def GetDimensions(self):
        return tuple(reversed(self.array.shape))
