"""Integer mode (docs/INTEGER.md): int8 activations, the image's codes as int8 weights, int32 accumulators and
fixed-point rescaling; an exact host reference and its fake-quantized float twin."""
