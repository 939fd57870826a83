"""Training: base models with quantization-aware training, NeuralFuse generators with EOPM over perturbed
(fault-injected) base models, checkpoints, and the import of a user's own classifier."""
