"""Deployment: export (the image-weighted graph, ONNX), lowering to Relax, C code generation, the bundle
format, toolchain calls, host tuning, the target descriptors and harness, and faultrun (target vs host)."""
