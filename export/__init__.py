"""On-device export: one self-contained .tflite (raw 16 kHz PCM in, log-probabilities out),
quantization, embedded metadata, and verification against the Keras model."""
