"""The acoustic model: a CNN front end that subsamples time by 4, recurrent layers (LSTM or
GRU, bidirectional or not: ``ModelConfig.rnn`` and ``bidirectional``), a linear layer over the
vocabulary plus the blank.

Shapes:
    features        float32 [batch, frames, n_mels]   (normalized log-mels)
    feature_lengths int32   [batch]                   (true frames of each utterance)
    logits          float32 [batch, out_frames, vocab_size], out_frames = output_length(frames)
TensorFlow is imported only by build_model, so configs and output_length stay light.
Frames past an utterance's true length are masked out of the BiLSTM, so an utterance gets
the same logits alone as padded in a batch. In training, the convolutions' batch normalization
takes its statistics over the true frames only (``masked_batch_norm``), so a batch's statistics
do not depend on how much padding its composition brings (7.6% of the frames on average at
LibriSpeech scale, up to 55% in a batch), and a global batch split over replicas or
micro-batches is normalized exactly as when whole.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

import asr  # noqa: F401  (selects tf_keras before TensorFlow loads)

CONV_LAYERS = 2  # each Conv2D has stride 2 in time and frequency: time subsampled by 4
SUBSAMPLING = 2**CONV_LAYERS  # 4; 40 ms per output frame at a 10 ms hop
RNNS = ("lstm", "gru")  # ModelConfig.rnn


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the network; saved with every checkpoint and exported model."""

    conv_channels: int = 32
    conv_kernel: int = 3
    lstm_layers: int = 2  # recurrent layers (GRUs too: the names predate them)
    lstm_units: int = 128  # units per layer and direction
    dropout: float = 0.2
    # lstm or gru (fewer weights and operations per step: 3 gates instead of 4). A
    # unidirectional model (bidirectional: false) streams (export/streaming.py): each output
    # frame sees the past and only the convolutions' and the frontend's fixed look-ahead
    # (lookahead_ms: 46 ms with the default kernel and features).
    rnn: str = "lstm"
    bidirectional: bool = True
    # Output frames (40 ms each) past its own that each output sees through a lookahead
    # convolution over the last recurrent layer (DeepSpeech2's row convolution): a
    # unidirectional model's future context, added to the look-ahead above. 0: none.
    lookahead_frames: int = 0

    def __post_init__(self):
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd (symmetric padding keeps ceil(T/2) frames), got {self.conv_kernel}")
        if self.rnn not in RNNS:
            raise ValueError(f"rnn must be one of {', '.join(RNNS)}, got {self.rnn!r}")
        if self.lookahead_frames < 0:
            raise ValueError(f"lookahead_frames must be >= 0, got {self.lookahead_frames}")

    def rnn_layer_name(self, i: int) -> str:
        """Layer i's name: bilstm0 (the names before GRUs existed), lstm0, bigru0, gru0."""
        return f"{'bi' if self.bidirectional else ''}{self.rnn}{i}"

    def to_dict(self) -> dict:
        return asdict(self)


def lookahead_frames(config: ModelConfig) -> int:
    """Feature frames (10 ms) past an output frame's first feature frame that it depends on:
    each convolution sees conv_kernel // 2 frames ahead of its center, the second one at twice
    the stride (3 with kernel 3: frame k of the output needs feature frames up to 4k + 3)."""
    reach = 0
    for i in range(CONV_LAYERS):
        reach += (config.conv_kernel // 2) * 2**i
    return reach


def lookahead_ms(config: ModelConfig, n_fft: int = 512, hop_length: int = 160, sample_rate: int = 16000) -> float:
    """How far past output frame k's start (sample 4k * hop) its inputs reach, in ms: the
    lookahead convolution's frames, the convolutions' look-ahead and half an analysis window
    (frames are centered). 46 ms with the defaults (3 frames of 10 ms + 256 samples)."""
    frames = lookahead_frames(config) + SUBSAMPLING * config.lookahead_frames
    return 1000.0 * (frames * hop_length + n_fft // 2) / sample_rate


def output_length(frames):
    """Output frames for ``frames`` input frames: ceil(frames / 4), exactly what the two
    stride-2 convolutions (odd kernel k, k // 2 zeros on each side) produce. Works on Python ints, numpy and TF tensors."""
    for _ in range(CONV_LAYERS):
        frames = (frames + 1) // 2
    return frames


def _zero_padded_frames(args, i: int):
    """[x [B, T_i, F, C], input lengths [B]] -> x with frames >= ceil(len / 2**i) zeroed."""
    import tensorflow as tf

    x, lengths = args
    keep = tf.sequence_mask(_valid_frames(lengths, i), maxlen=tf.shape(x)[1], dtype=x.dtype)
    return x * keep[:, :, None, None]


def _valid_frames(lengths, halvings: int):
    """Frames of an utterance of ``lengths`` input frames after ``halvings`` stride-2 steps."""
    for _ in range(halvings):
        lengths = (lengths + 1) // 2
    return lengths


def lookahead_conv(frames: int, name: str = "lookahead"):
    """DeepSpeech2's lookahead (row) convolution: [B, T, D] -> [B, T, D], output t =
    sum_j kernel[j] * x[t + j] for j in 0..frames (per channel), frames past the end (or past
    the mask) taken as zeros. Starts as the identity (kernel[0] = 1). Elementwise ops only:
    export/streaming.py computes it on a buffer of the last ``frames`` inputs."""
    import tensorflow as tf
    import tf_keras as keras

    class Lookahead(keras.layers.Layer):
        def __init__(self, frames: int, **kwargs):
            super().__init__(**kwargs)
            self.frames, self.supports_masking = frames, True

        def build(self, input_shape):
            init = keras.initializers.Constant(np.eye(self.frames + 1, 1).repeat(input_shape[-1], 1))
            self.kernel = self.add_weight(name="kernel", shape=(self.frames + 1, input_shape[-1]), initializer=init)

        def call(self, x, mask=None):
            if mask is not None:
                x = x * tf.cast(mask, x.dtype)[:, :, None]
            steps = tf.shape(x)[1]
            padded = tf.pad(x, [[0, 0], [0, self.frames], [0, 0]])
            kernel = tf.cast(self.kernel, x.dtype)
            return tf.add_n([padded[:, j : j + steps] * kernel[j] for j in range(self.frames + 1)])

        def get_config(self):
            return {**super().get_config(), "frames": self.frames}

    return Lookahead(frames, name=name)


def masked_batch_norm(name: str, halvings: int):
    """A synchronized BatchNormalization called on [x [B, T, F, C], input lengths [B]]: its
    batch statistics (training) cover only the frames t < ceil(length / 2**halvings) of each
    row; at inference it is plain batch normalization with the moving statistics. Its weights
    (gamma, beta, moving mean and variance) are those of ``keras.layers.BatchNormalization``,
    so a model without lengths (the TFLite graph) takes them by name."""
    import tensorflow as tf
    import tf_keras as keras

    class MaskedBatchNorm(keras.layers.BatchNormalization):
        def __init__(self, halvings: int, synchronized: bool = True, **kwargs):
            kwargs.pop("fused", None)  # the fused kernel ignores masks
            super().__init__(synchronized=synchronized, fused=False, **kwargs)
            self.halvings = halvings

        def build(self, input_shape):
            super().build(input_shape[0])
            self.input_spec = None  # two inputs; BatchNormalization's spec describes x alone

        def call(self, inputs, training=None):
            x, lengths = inputs
            valid = _valid_frames(lengths, self.halvings)
            mask = tf.sequence_mask(valid, maxlen=tf.shape(x)[1], dtype=x.dtype)[:, :, None]  # [B, T, 1]
            return super().call(x, training=training, mask=mask)

        def compute_mask(self, inputs, mask=None):
            return None

        def compute_output_shape(self, input_shape):
            return input_shape[0]

        def get_config(self):
            return {**super().get_config(), "halvings": self.halvings, "synchronized": self.synchronized}

    return MaskedBatchNorm(halvings, name=name)


def build_model(config: ModelConfig, n_mels: int, vocab_size: int, with_lengths: bool = True):
    """Build the CNN + recurrent network (bidirectional or not, LSTM or GRU: ``config``).

    with_lengths=True: inputs [features [B, T, n_mels], feature_lengths [B]], for training and
    batched decoding. with_lengths=False: input features [B, T, n_mels] only (one unpadded
    utterance per row), the graph TFLite export converts. Both have the same layer names, so
    weights move between them by name. Returns a tf_keras Model.
    """
    import tensorflow as tf
    import tf_keras as keras

    features = keras.Input(shape=(None, n_mels), name="features")
    inputs = [features]
    lengths = None
    if with_lengths:
        lengths = keras.Input(shape=(), dtype="int32", name="feature_lengths")
        inputs.append(lengths)
    x = keras.layers.Reshape((-1, n_mels, 1), name="add_channel")(features)
    pad = config.conv_kernel // 2
    for i in range(CONV_LAYERS):
        if lengths is not None:
            # Zero the frames past each utterance's length: after BatchNorm and ReLU they are
            # not zero, and the next convolution would carry them into the last valid frames.
            x = keras.layers.Lambda(_zero_padded_frames, arguments={"i": i}, name=f"conv{i}_mask")([x, lengths])
        # Symmetric explicit padding + 'valid': the frame grid never depends on the padded
        # length (TF's 'same' pads odd and even lengths differently). Output: ceil(T / 2).
        x = keras.layers.ZeroPadding2D(((pad, pad), (pad, pad)), name=f"conv{i}_pad")(x)
        x = keras.layers.Conv2D(
            config.conv_channels, config.conv_kernel, strides=2, padding="valid", use_bias=False, name=f"conv{i}"
        )(x)
        # synchronized: under tf.distribute the batch statistics are those of the global batch;
        # masked: over true frames only. So N replicas (or micro-batches) train exactly like one
        # process with the same global batch, whatever the utterances' lengths.
        if lengths is not None:
            x = masked_batch_norm(f"conv{i}_bn", i + 1)([x, lengths])
        else:
            x = keras.layers.BatchNormalization(synchronized=True, name=f"conv{i}_bn")(x)
        x = keras.layers.ReLU(name=f"conv{i}_relu")(x)
    freq = n_mels
    for _ in range(CONV_LAYERS):
        freq = (freq + 1) // 2
    x = keras.layers.Reshape((-1, freq * config.conv_channels), name="flatten_freq")(x)
    mask = None
    if lengths is not None:
        mask = keras.layers.Lambda(
            lambda t: tf.sequence_mask(output_length(t[1]), maxlen=tf.shape(t[0])[1]), name="frame_mask"
        )([x, lengths])
    cell = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[config.rnn]
    for i in range(config.lstm_layers):
        x = keras.layers.Dropout(config.dropout, name=f"dropout{i}")(x)
        if config.bidirectional:
            rnn = cell(config.lstm_units, return_sequences=True, name=f"{config.rnn}{i}")
            x = keras.layers.Bidirectional(rnn, name=config.rnn_layer_name(i))(x, mask=mask)
        else:
            x = cell(config.lstm_units, return_sequences=True, name=config.rnn_layer_name(i))(x, mask=mask)
    if config.lookahead_frames:
        x = lookahead_conv(config.lookahead_frames)(x, mask=mask)
    x = keras.layers.Dropout(config.dropout, name=f"dropout{config.lstm_layers}")(x)
    # float32 logits even under a mixed_float16 policy (CTC and softmax need the range)
    logits = keras.layers.Dense(vocab_size, dtype="float32", name="logits")(x)
    return keras.Model(inputs=inputs, outputs=logits, name=f"cnn_{config.rnn_layer_name(0)[:-1]}_ctc")


def make_forward(net, n_mels: int):
    """A traced-once inference function: (features [B, T, n_mels] float32, lengths [B] int32)
    -> log-probabilities [B, output_length(T), vocab_size]."""
    import tensorflow as tf

    return tf.function(
        lambda f, n: tf.nn.log_softmax(net([f, n], training=False)),
        input_signature=[tf.TensorSpec([None, None, n_mels], tf.float32), tf.TensorSpec([None], tf.int32)],
    )
