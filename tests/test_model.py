"""asr.model: output_length against the real network, padding invariance, the two graph variants."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tf_keras as keras

from asr.model import ModelConfig, build_model, output_length

N_MELS, VOCAB = 80, 29
TINY = ModelConfig(conv_channels=4, lstm_layers=1, lstm_units=8)


def predict(model, features: np.ndarray, lengths=None) -> np.ndarray:
    """Inference-mode logits (dropout off, BatchNorm on its moving statistics)."""
    features = np.asarray(features, np.float32)
    if lengths is None:
        return model.predict_on_batch(features)
    return model.predict_on_batch([features, np.asarray(lengths, np.int32)])


def copy_weights_by_name(src, dst) -> None:
    for layer in dst.layers:
        if layer.weights:
            layer.set_weights(src.get_layer(layer.name).get_weights())


@pytest.fixture(scope="module")
def fresh_model():
    """Tiny model as initialised: BatchNorm is the identity (beta 0, moving mean 0, variance 1)."""
    keras.utils.set_random_seed(0)
    return build_model(TINY, N_MELS, VOCAB)


@pytest.fixture(scope="module")
def trained_like_model(fresh_model):
    """Same weights, but BatchNorm statistics like a trained model's: BN(0) != 0."""
    model = build_model(TINY, N_MELS, VOCAB)
    copy_weights_by_name(fresh_model, model)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # the masked one too
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    np.full(beta.shape, 0.5, np.float32),
                    rng.normal(0.0, 0.3, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
                ]
            )
    return model


# ---------------------------------------------------------------- output_length


def test_output_length_is_ceil_of_quarter():
    for n in range(0, 300):
        assert output_length(n) == math.ceil(n / 4), n


def test_output_length_on_arrays_and_tensors():
    import tensorflow as tf

    n = np.array([1, 4, 5, 97, 6001])
    expected = [math.ceil(v / 4) for v in n]
    np.testing.assert_array_equal(output_length(n), expected)
    np.testing.assert_array_equal(output_length(tf.constant(n, tf.int32)).numpy(), expected)


@pytest.mark.parametrize("frames", list(range(1, 41)) + [97, 401, 1000, 6001])
def test_output_length_matches_model(fresh_model, frames):
    logits = predict(fresh_model, np.zeros((1, frames, N_MELS)), [frames])
    assert logits.shape == (1, output_length(frames), VOCAB)


# ---------------------------------------------------------------- padding invariance


def alone_and_padded(model, rng, short: int, long: int):
    """Logits of one utterance alone and zero-padded in a batch next to a longer one, cut to its length."""
    batch = rng.standard_normal((2, long, N_MELS)).astype(np.float32)
    batch[0, short:] = 0.0
    alone = predict(model, batch[:1, :short], [short])[0]
    padded = predict(model, batch, [short, long])
    assert padded.shape[1] == output_length(long)
    return alone, padded[0, : output_length(short)]


# long - short is a multiple of 4: the frame grids of the two lengths coincide trivially
ALIGNED = [(37, 41), (36, 60), (20, 44), (1, 5)]
# otherwise only explicit symmetric padding keeps an utterance's frame grid independent of
# the padded length (TF's 'same' padding puts its extra zero before or after by parity)
MISALIGNED = [(37, 60), (36, 37), (21, 23), (1, 2)]


@pytest.mark.parametrize("short, long", ALIGNED)
def test_lstm_mask_ignores_padded_frames(fresh_model, rng, short, long):
    """With BN at its identity initialisation and conv padding aligned, padded frames stay zero
    through the conv stack: this isolates the BiLSTM frame mask, which must hide them."""
    alone, padded = alone_and_padded(fresh_model, rng, short, long)
    np.testing.assert_allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("short, long", MISALIGNED)
def test_padding_does_not_shift_conv_alignment(fresh_model, rng, short, long):
    alone, padded = alone_and_padded(fresh_model, rng, short, long)
    np.testing.assert_allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("short, long", ALIGNED)
def test_padding_does_not_leak_through_batchnorm(trained_like_model, rng, short, long):
    """With trained BN statistics BN(0) != 0: padded frames must be zeroed before each conv."""
    alone, padded = alone_and_padded(trained_like_model, rng, short, long)
    np.testing.assert_allclose(padded, alone, atol=1e-5)


@pytest.mark.parametrize("lengths, extra", [((37, 60), 40), ((5, 23), 9), ((60, 60), 100)])
def test_training_batchnorm_statistics_ignore_padding(trained_like_model, rng, lengths, extra):
    """In training mode the convolutions' batch statistics come from true frames only: the same
    utterances padded to a longer batch give the same logits on their true frames (dropout off)."""
    import dataclasses

    import tensorflow as tf

    model = build_model(dataclasses.replace(TINY, dropout=0.0), N_MELS, VOCAB)
    copy_weights_by_name(trained_like_model, model)

    longest = max(lengths)
    features = rng.standard_normal((len(lengths), longest, N_MELS)).astype(np.float32)
    for i, n in enumerate(lengths):
        features[i, n:] = 0.0
    padded = np.concatenate([features, np.zeros((len(lengths), extra, N_MELS), np.float32)], axis=1)
    n = tf.constant(lengths, tf.int32)
    short = model([tf.constant(features), n], training=True).numpy()
    longer = model([tf.constant(padded), n], training=True).numpy()
    for i, frames in enumerate(lengths):
        out = output_length(frames)
        np.testing.assert_allclose(longer[i, :out], short[i, :out], atol=1e-5)


# ---------------------------------------------------------------- the two graphs


@pytest.fixture(scope="module")
def no_lengths_model(trained_like_model):
    model = build_model(TINY, N_MELS, VOCAB, with_lengths=False)
    copy_weights_by_name(trained_like_model, model)
    return model


def test_both_graphs_have_the_same_weighted_layers(trained_like_model, no_lengths_model):
    def weighted(m):
        return {layer.name: [w.shape for w in layer.weights] for layer in m.layers if layer.weights}

    assert weighted(no_lengths_model) == weighted(trained_like_model)
    assert [i.name for i in no_lengths_model.inputs] == ["features"]
    assert len(trained_like_model.inputs) == 2


@pytest.mark.parametrize("frames", [1, 2, 7, 36, 37, 100])
def test_without_lengths_gives_same_logits_on_unpadded_utterance(trained_like_model, no_lengths_model, rng, frames):
    features = rng.standard_normal((1, frames, N_MELS))
    with_lengths = predict(trained_like_model, features, [frames])
    without = predict(no_lengths_model, features)
    assert without.shape == with_lengths.shape == (1, output_length(frames), VOCAB)
    np.testing.assert_allclose(without, with_lengths, atol=1e-5)


def test_inference_is_deterministic(trained_like_model, rng):
    features = rng.standard_normal((2, 23, N_MELS))
    a = predict(trained_like_model, features, [23, 17])
    b = predict(trained_like_model, features, [23, 17])
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- size of the default model


def test_default_model_parameter_count():
    cfg = ModelConfig()
    model = build_model(cfg, N_MELS, VOCAB)
    c, k, u = cfg.conv_channels, cfg.conv_kernel, cfg.lstm_units
    # independent count: 2 bias-free convs + BN (4 per channel), BiLSTMs (2 directions x 4 gates), dense
    conv = k * k * 1 * c + k * k * c * c + 2 * 4 * c
    freq = math.ceil(math.ceil(N_MELS / 2) / 2)
    lstm_in = [freq * c] + [2 * u] * (cfg.lstm_layers - 1)
    lstm = sum(2 * 4 * u * (n + u + 1) for n in lstm_in)
    dense = 2 * u * VOCAB + VOCAB
    assert model.count_params() == conv + lstm + dense
    assert 1_000_000 <= model.count_params() <= 1_500_000


# ---------------------------------------------------------------- recurrent options


@pytest.mark.parametrize("rnn, bidirectional, ahead", [("gru", True, 0), ("lstm", False, 0), ("gru", False, 3)])
def test_every_recurrent_option_ignores_padding_and_names_its_layers(rng, rnn, bidirectional, ahead):
    """GRU or LSTM, one direction or two, with or without the lookahead convolution: an
    utterance gets the same logits alone as padded in a batch (the lookahead sees zeros past
    its end in both), and the layers are named for what they are."""
    config = ModelConfig(conv_channels=4, lstm_layers=2, lstm_units=8, rnn=rnn, bidirectional=bidirectional,
                         lookahead_frames=ahead)
    net = build_model(config, N_MELS, VOCAB)
    if ahead:
        net.get_layer("lookahead").set_weights([rng.normal(0, 1, (ahead + 1, 8)).astype(np.float32)])
    names = {layer.name for layer in net.layers}
    assert {config.rnn_layer_name(0), config.rnn_layer_name(1)} <= names
    assert config.rnn_layer_name(1) == f"{'bi' if bidirectional else ''}{rnn}1"
    for short, long in ALIGNED[:2] + MISALIGNED[:2]:
        alone, padded = alone_and_padded(net, rng, short, long)
        np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_recurrent_options_are_checked_and_sized():
    with pytest.raises(ValueError, match="rnn must be one of lstm, gru"):
        ModelConfig(rnn="rnn")
    with pytest.raises(ValueError, match="lookahead_frames must be >= 0"):
        ModelConfig(lookahead_frames=-1)
    from asr.model import lookahead_ms

    assert lookahead_ms(ModelConfig()) == 46.0  # 3 frames of the convolutions + half a 512-sample window
    assert lookahead_ms(ModelConfig(conv_kernel=5)) == 76.0
    assert lookahead_ms(ModelConfig(lookahead_frames=4)) == 206.0
    lstm = build_model(ModelConfig(lstm_layers=1, lstm_units=16, bidirectional=False), N_MELS, VOCAB)
    gru = build_model(ModelConfig(lstm_layers=1, lstm_units=16, bidirectional=False, rnn="gru"), N_MELS, VOCAB)
    inputs = 20 * 32  # 80 mels halved twice, times 32 channels
    assert lstm.get_layer("lstm0").count_params() == 4 * (inputs * 16 + 16 * 16 + 16)
    assert gru.get_layer("gru0").count_params() == 3 * (inputs * 16 + 16 * 16 + 2 * 16)  # reset_after: two biases
