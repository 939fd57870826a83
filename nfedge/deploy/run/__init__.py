"""bundle -> numbers: the emulators nfedge runs and their sandbox, the harness (run_on_target), the host runner
and faultrun (target vs host on the same faulty images). Never imports nfedge.deploy.compile."""
