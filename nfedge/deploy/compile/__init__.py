"""torch -> bundle: export, lowering, the integer graph and int8 kernels, C code generation, toolchain, tuning;
the build stage (build.py: build_bundle, build_for_target). Never imports nfedge.deploy.run."""
