"""Host-side analysis: accuracy under faults (evaluate), the dataflow and energy model, and the run report."""
