"""A CTC speech recognizer on tf_keras: librosa log-mel features, a CNN-BiLSTM, greedy CTC decoding.

The package picks the Keras 2 API (tf_keras) before anything imports TensorFlow: fused
TFLite LSTM kernels, full-int8 conversion and tensorflow-model-optimization all need it.
Importing ``asr`` itself never imports TensorFlow.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # must precede the first TensorFlow import
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ errors such as the CUDA probe on CPU-only machines; set 0 to debug

__version__ = "0.1.0"
