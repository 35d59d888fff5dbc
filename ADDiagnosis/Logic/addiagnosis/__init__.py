"""ADDiagnosis engine: explainable Alzheimer's-disease classification of brain MRI.

A plain Python package importable without 3D Slicer. The one import name is
``addiagnosis`` everywhere: the CLI, the tests, the web app and inside Slicer
(where ``ADDiagnosis.py`` puts ``ADDiagnosis/Logic`` on ``sys.path``).

Research use only: not a medical device.
"""

__version__ = "0.1.0"

# the one research-use line, shown wherever a diagnosis is
RESEARCH_USE = "Research use only: not a medical device, not for clinical diagnosis."
