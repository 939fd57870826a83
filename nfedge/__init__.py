"""nfedge: NeuralFuse on the edge.

Stages (each one public function over a validated config dataclass):
quantize -> inject faults -> train generator (EOPM) -> build (TVM) -> faultrun (emulated target).
"""

__version__ = "0.1.0"
