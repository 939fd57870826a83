"""Deployment, in two rooms that never import each other (tests/test_layout.py):

- compile/: torch -> bundle (export, lowering to Relax, the integer graphs and int8 kernels, C code generation,
  the toolchain, host tuning; `build_bundle` / `build_for_target`);
- run/: bundle -> numbers (the emulator sandbox, processes, the harness, the host runner, faultrun).

What both read lies beside them: the target descriptors (targets.py), the bundle format (bundle.py) and the guest
I/O protocol (guest_io.py, the one definition the firmware harness's nfedge_rt.h is checked against).
"""
