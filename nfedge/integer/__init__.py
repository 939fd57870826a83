"""Integer mode (docs/INTEGER.md): int8 activations, the image's codes as int8 weights, int32 accumulators and
fixed-point rescaling; an exact host reference and its fake-quantized float twin."""

# The arithmetic modes every stage takes: the paper's float layers on the image's codes, or integer mode.
MODES = ("weight-only", "integer")

