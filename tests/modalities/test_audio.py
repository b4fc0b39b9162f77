import math
import re

import numpy as np
import pytest
import soundfile
import torch

from modalities.audio import TONES_SPACE, AudioConfig, AudioModality
from modalities.base import InvalidSample

RATE = 16000


def _audio(**kw):
    torch.manual_seed(0)
    config = {"sample_rate": RATE, "clip_seconds": 0.5, "n_mels": 32, "patch_freq": 16, "patch_time": 10}
    config.update({"width": 32, "depth": 1, "heads": 2, **kw})
    parts = AudioModality.build(AudioConfig(**config), "audio")
    parts.encoder.eval()
    return parts


def _sine(freq, rate, seconds, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(round(rate * seconds))) / rate)).astype(np.float32)


def _noise(seed, samples):
    return np.random.default_rng(seed).normal(0, 0.1, samples).astype(np.float32)


def _dominant_hz(wave, rate):
    wave = np.asarray(wave, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]


def _silence_floor(audio):
    """The normalised log-mel value of an all-zero frame."""
    c = audio.encoder.config
    return (math.log(1e-6) - c.mel_mean) / c.mel_std


# --- spectrogram samples and padding ------------------------------------------------------


def test_short_clip_is_zero_padded_and_its_padding_patches_are_masked():
    audio = _audio()
    assert audio.encoder.clip_samples == 8000 and audio.encoder.frames == 50 and audio.encoder.grid == (2, 5) and audio.encoder.num_patches == 10
    n = 3000
    sample = audio.processor.transform(_noise(0, n))
    assert sample["mel"].shape == (32, 50)
    # frames whose centred window (n_fft 400) touches the audio: ceil((3000 + 200) / 160)
    assert sample["valid_frames"] == 20
    # frames whose window lies wholly after the audio hold the log-mel of silence; earlier ones do not
    floor = _silence_floor(audio)
    assert torch.allclose(sample["mel"][:, 20:], torch.full((32, 30), floor), atol=1e-4)
    assert (sample["mel"][:, :19] > floor + 1).all()

    batch = audio.processor.collate([sample, audio.processor.transform(_noise(1, 8000))])
    assert batch["mel"].shape == (2, 32, 50) and batch["valid_frames"].tolist() == [20, 50]
    # time patches start at frames 0, 10, 20, 30, 40: those starting at or after frame 20 are padding
    time_padding = [False, False, True, True, True]
    mask = audio.encoder.patch_padding_mask(batch)
    assert mask.tolist() == [time_padding * 2, [False] * 10]  # frequency-major: both frequency rows alike
    # every patch flagged as padding holds only silence
    patches = audio.encoder.patchify(batch["mel"])
    assert torch.allclose(patches[0][mask[0]], torch.tensor(floor), atol=1e-4)

    out = audio.encoder(batch)
    assert out.pooled.shape == (2, 32) and out.tokens.shape == (2, 10, 32)
    assert torch.equal(out.padding_mask, mask)


def test_long_clip_random_crop_follows_the_rng_and_centre_crop_takes_the_middle():
    audio = _audio()
    n = 20000
    ramp = torch.arange(n, dtype=torch.float32)
    clip, valid = audio.processor.crop(ramp, None)
    start = (n - 8000) // 2
    assert valid == 8000 and torch.equal(clip, ramp[start : start + 8000])
    a, valid_a = audio.processor.crop(ramp, np.random.default_rng(1))
    b, _ = audio.processor.crop(ramp, np.random.default_rng(1))
    c, _ = audio.processor.crop(ramp, np.random.default_rng(2))
    assert valid_a == 8000 and torch.equal(a, b) and not torch.equal(a, c)
    for crop in (a, c):  # a contiguous window of the input
        assert torch.equal(crop, ramp[int(crop[0]) : int(crop[0]) + 8000])
    # a clip exactly as long as the crop is taken whole
    assert torch.equal(audio.processor.crop(ramp[:8000], np.random.default_rng(3))[0], ramp[:8000])

    wave = _noise(5, n)
    first, again, other = (audio.processor.transform(wave, np.random.default_rng(s)) for s in (7, 7, 8))
    torch.manual_seed(123)  # the global RNG must not matter
    assert torch.equal(first["mel"], again["mel"]) and not torch.equal(first["mel"], other["mel"])
    centre = audio.processor.transform(wave)
    assert torch.equal(centre["mel"], audio.processor.transform(wave)["mel"])
    assert torch.allclose(centre["mel"], audio.processor.log_mel(torch.from_numpy(wave[start : start + 8000])))
    assert centre["valid_frames"] == first["valid_frames"] == audio.encoder.frames
    batch = audio.processor.collate([first, centre])
    assert not audio.encoder.patch_padding_mask(batch).any()
    assert not audio.encoder(batch).padding_mask.any()


def test_padding_patches_do_not_change_the_embedding():
    audio = _audio()
    batch = audio.processor.collate([audio.processor.transform(_noise(0, 3000)), audio.processor.transform(_noise(1, 5000))])
    valid = batch["valid_frames"].tolist()
    assert valid == [20, 33]  # ceil((samples + n_fft // 2) / hop)
    junk = {k: v.clone() for k, v in batch.items()}
    generator = torch.Generator().manual_seed(0)
    for i, frames in enumerate(valid):
        first_padded = -(-frames // audio.encoder.config.patch_time) * audio.encoder.config.patch_time  # patches wholly padding
        assert first_padded < audio.encoder.frames
        junk["mel"][i, :, first_padded:] = 5 * torch.randn(32, audio.encoder.frames - first_padded, generator=generator)
    with torch.no_grad():
        clean, dirty = audio.encoder(batch), audio.encoder(junk)
    assert torch.allclose(clean.pooled, dirty.pooled, atol=1e-5)
    kept = ~clean.padding_mask
    assert torch.allclose(clean.tokens[kept], dirty.tokens[kept], atol=1e-5)
    # the same kind of edit inside the audio does change the embedding
    inside = {k: v.clone() for k, v in batch.items()}
    inside["mel"][0, :, :10] = 5 * torch.randn(32, 10, generator=generator)
    with torch.no_grad():
        changed = audio.encoder(inside)
    assert not torch.allclose(clean.pooled[0], changed.pooled[0], atol=1e-3)
    assert torch.allclose(clean.pooled[1], changed.pooled[1], atol=1e-5)


def test_patch_mask_replaces_patches_with_the_mask_token():
    audio = _audio()
    batch = audio.processor.collate([audio.processor.transform(_noise(0, 8000)), audio.processor.transform(_noise(1, 8000))])
    everything = torch.ones(2, audio.encoder.num_patches, dtype=torch.bool)
    with torch.no_grad():
        plain = audio.encoder(batch).pooled
        masked = audio.encoder(batch, patch_mask=everything).pooled
    assert not torch.allclose(plain[0], plain[1])
    assert torch.allclose(masked[0], masked[1], atol=1e-6)  # nothing of the input is left


def test_spec_augment_is_a_function_of_the_sample_rng_and_off_in_eval():
    audio = _audio(freq_mask=8, time_mask=10)
    plain = _audio()
    wave = _noise(3, 8000)
    a = audio.processor.transform(wave, np.random.default_rng(7))["mel"]
    torch.manual_seed(99)
    b = audio.processor.transform(wave, np.random.default_rng(7))["mel"]
    c = audio.processor.transform(wave, np.random.default_rng(8))["mel"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    unmasked = plain.processor.transform(wave, np.random.default_rng(7))["mel"]
    assert (a == 0).any() and not torch.equal(a, unmasked)  # torchaudio masks fill with 0
    assert torch.equal(audio.processor.transform(wave)["mel"], plain.processor.transform(wave)["mel"])


def test_front_end_is_not_part_of_the_state_dict():
    assert not [k for k in _audio().encoder.state_dict() if "mel" in k.lower() or "augment" in k]


# --- reading files ------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_files_are_resampled_to_the_configured_rate(tmp_path, rate):
    audio = _audio()
    seconds = 0.3
    path = tmp_path / f"tone_{rate}.wav"
    soundfile.write(path, _sine(440, rate, seconds), rate)
    wave = audio.processor.waveform(str(path))
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(wave.shape[0] - round(seconds * RATE)) <= 2
    assert abs(_dominant_hz(wave, RATE) - 440) < 5  # one FFT bin is 3.3 Hz here
    middle = wave[200:-200]  # away from the resampling filter's edges
    assert abs(float(middle.abs().max()) - 0.5) < 0.02


def test_stereo_is_mixed_down_to_the_mean(tmp_path):
    audio = _audio()
    left, right = _sine(440, RATE, 0.25), _noise(0, 4000)
    stereo = np.stack([left, right], axis=1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, RATE, subtype="FLOAT")
    expected = torch.from_numpy((left + right) / 2)
    assert torch.allclose(audio.processor.waveform(str(path)), expected, atol=1e-6)
    assert torch.allclose(audio.processor.waveform((stereo, RATE)), expected, atol=1e-6)
    # up to max_channels channels are accepted
    eight = np.random.default_rng(1).normal(0, 0.1, (1000, 8)).astype(np.float32)
    assert torch.allclose(_audio(max_channels=8).processor.waveform(eight), torch.from_numpy(eight.mean(1)), atol=1e-6)


def test_raw_forms_agree_and_bad_arrays_are_invalid():
    audio = _audio()
    wave = _noise(0, 1000)
    expected = torch.from_numpy(wave)
    for raw in (wave, wave[:, None], (wave, RATE), {"array": wave, "sample_rate": RATE}, wave.astype(np.float64)):
        assert torch.allclose(audio.processor.waveform(raw), expected)
    resampled = audio.processor.waveform({"array": _sine(440, 8000, 0.3), "sample_rate": 8000})
    assert resampled.shape[0] == 4800 and abs(_dominant_hz(resampled, RATE) - 440) < 5
    bad = [
        (np.zeros((10, 2, 2), np.float32), "shape"),
        (np.zeros(0, np.float32), "zero length"),
        (np.zeros((100, 0), np.float32), "0 channels"),
        ((np.zeros((100, 9), np.float32), RATE), "9 channels"),
        (np.array([0.1, np.inf, 0.2], np.float32), "NaN or infinite"),
        ((wave, 0), "sample rate"),
    ]
    for raw, reason in bad:
        with pytest.raises(InvalidSample, match=reason) as err:
            audio.processor.waveform(raw)
        assert err.value.source is None


def _write_corrupt(path):
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVE this is not really a wav file" * 4)


def _write_empty(path):
    path.write_bytes(b"")


def _write_zero_frames(path):
    soundfile.write(path, np.zeros(0, np.float32), RATE)
    assert path.stat().st_size > 0  # a valid header, no frames


def _write_header_only(path):
    soundfile.write(path, _sine(440, RATE, 0.5), RATE)
    path.write_bytes(path.read_bytes()[:30])  # cut inside the header


def _write_nan(path):
    wave = _sine(440, RATE, 0.25)
    wave[100] = np.nan
    soundfile.write(path, wave, RATE, subtype="FLOAT")


def _write_text(path):
    path.write_text("hello, I am not a sound\n")


def _write_random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(2000))


def _write_ten_channels(path):
    soundfile.write(path, np.random.default_rng(0).normal(0, 0.1, (1600, 10)).astype(np.float32), RATE)


def _write_too_long(path):
    soundfile.write(path, _sine(440, RATE, 0.5), RATE)


BAD_FILES = [
    ("missing.wav", None, "corrupt|not found"),
    ("corrupt.wav", _write_corrupt, "unsupported or corrupt"),
    ("empty.wav", _write_empty, "unsupported or corrupt"),
    ("zero.wav", _write_zero_frames, "no samples"),
    ("header_only.wav", _write_header_only, "unsupported or corrupt"),
    ("nan.wav", _write_nan, "NaN"),
    ("notes.txt", _write_text, "unsupported or corrupt"),
    ("random.mp3", _write_random_bytes, "unsupported or corrupt"),
    ("ten_channels.wav", _write_ten_channels, "10 channels; expected 1 to 8"),
    ("long.wav", _write_too_long, "over max_file_seconds=0.3"),  # 0.5 s
]


@pytest.mark.parametrize("name, write, reason", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_are_invalid_samples_naming_the_file(tmp_path, name, write, reason):
    audio = _audio(max_channels=8, max_file_seconds=0.3)
    path = tmp_path / name
    if write is not None:
        write(path)
    with pytest.raises(InvalidSample, match=reason) as err:
        audio.processor.transform(str(path))
    assert err.value.source == str(path) and name in str(err.value)


def test_truncated_wav_is_refused_and_a_streamed_one_read(tmp_path):
    # libsndfile decodes a WAV cut in half without an error (the first half of the
    # samples); its header log says the data chunk is short, and that makes it a bad sample.
    audio = _audio()
    wave = _sine(440, RATE, 1.0)
    path = tmp_path / "truncated.wav"
    soundfile.write(path, wave, RATE)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidSample, match=r"truncated: the header declares 32000 bytes of audio data, the file holds 15978"):
        audio.processor.load(str(path))
    # a WAV streamed to a pipe declares 0xFFFFFFFF bytes (length unknown): not cut, read whole
    streamed = bytearray(whole)
    streamed[4:8] = streamed[40:44] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(streamed))
    data, rate = audio.processor.load(str(path))
    assert rate == RATE and data.shape == (RATE, 1)
    assert np.allclose(data[:, 0], wave, atol=1e-4)


def test_file_length_limit_counts_seconds(tmp_path):
    audio = _audio(max_file_seconds=0.3)
    ok, long = tmp_path / "ok.wav", tmp_path / "long.wav"
    soundfile.write(ok, _sine(440, 8000, 0.25), 8000)
    soundfile.write(long, _sine(440, 48000, 0.35), 48000)
    assert audio.processor.load(str(ok))[0].shape == (2000, 1)
    with pytest.raises(InvalidSample, match="max_file_seconds"):
        audio.processor.load(str(long))


def test_missing_file_is_reported_as_not_found(tmp_path):
    with pytest.raises(InvalidSample, match="not found"):
        _audio().processor.load(str(tmp_path / "missing.wav"))


def test_too_long_message_reports_the_real_duration(tmp_path):
    path = tmp_path / "long.wav"
    _write_too_long(path)
    with pytest.raises(InvalidSample) as err:
        _audio(max_file_seconds=0.1).processor.load(str(path))
    reported = float(re.search(r"audio is ([0-9.]+)s long", err.value.reason).group(1))
    assert reported == pytest.approx(0.5, abs=0.01)


# --- embedded world -------------------------------------------------------------------------


def test_render_is_deterministic():
    audio = _audio()
    concept = {"contour": "warbling", "timbre": "square", "register": "middle"}
    a, rate = audio.renderer.render(concept, np.random.default_rng(1))
    b, _ = audio.renderer.render(concept, np.random.default_rng(1))
    c, _ = audio.renderer.render(concept, np.random.default_rng(2))
    assert rate == RATE and a.dtype == np.float32 and a.shape == (audio.encoder.clip_samples,)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0
    assert set(TONES_SPACE.class_attributes["contour"]) >= {"rising", "falling"}


def _pitch_change(audio, concept, seed):
    """Mean argmax mel bin over the last third of the voiced frames minus the first third."""
    mel = audio.processor.transform(audio.renderer.render(concept, np.random.default_rng(seed)))["mel"]
    loudness = mel.max(0).values
    voiced = mel[:, loudness > (loudness.min() + loudness.max()) / 2]
    third = voiced.shape[1] // 3
    assert third >= 5
    peak = voiced.argmax(0).float()
    return float(peak[-third:].mean() - peak[:third].mean())


@pytest.mark.parametrize("timbre", ["sine", "sawtooth", "noise"])
def test_rising_tones_rise_and_falling_tones_fall(timbre):
    # fine mel resolution at low pitch: the low register starts near 100 Hz
    audio = _audio(sample_rate=8000, n_mels=128, n_fft=1024, hop_length=80)
    for seed in range(3):
        for register in ("low", "high"):
            concept = {"timbre": timbre, "register": register}
            rising = _pitch_change(audio, {**concept, "contour": "rising"}, seed)
            falling = _pitch_change(audio, {**concept, "contour": "falling"}, seed)
            steady = _pitch_change(audio, {**concept, "contour": "steady"}, seed)
            assert rising > 1.0 and falling < -1.0
            # a noise band's peak bin wanders among its partials; a steady one still moves less
            assert abs(steady) < min(rising, -falling)


# --- wav2vec2 -------------------------------------------------------------------------------


def test_wav2vec2_encoder_encodes_and_pads_short_clips():
    torch.manual_seed(0)
    config = AudioConfig(encoder="wav2vec2", clip_seconds=0.5, width=32, heads=2, wav2vec2_layers=1)
    audio = AudioModality.build(config, "audio")
    audio.encoder.eval()
    short = audio.processor.transform(_noise(0, 3000))
    assert short["wave"].shape == (8000,) and short["valid_samples"] == 3000
    assert torch.count_nonzero(short["wave"][3000:]) == 0
    batch = audio.processor.collate([short, audio.processor.transform(_noise(1, 12000))])
    assert batch["wave"].shape == (2, 8000) and batch["valid_samples"].tolist() == [3000, 8000]
    with torch.no_grad():
        out = audio.encoder(batch)
    assert out.pooled.shape == (2, 32) and torch.isfinite(out.pooled).all()
    # conv stack (10/5, 4x 3/2, 2x 2/2): 8000 samples -> 24 frames, 3000 -> 9
    assert out.tokens.shape == (2, 24, 32)
    assert out.padding_mask.tolist() == [[False] * 9 + [True] * 15, [False] * 24]
    with pytest.raises(ValueError, match="patch masks"):
        audio.encoder(batch, patch_mask=torch.zeros(2, 24, dtype=torch.bool))


def test_frequency_shift_moves_the_spectrum_and_follows_the_rng():
    audio = _audio(freq_shift=4)
    wave = _sine(1000, RATE, 0.5)
    plain = audio.processor.transform(wave)  # eval: no shift
    shifted = [audio.processor.transform(wave, np.random.default_rng(seed))["mel"] for seed in range(6)]
    assert torch.equal(shifted[0], audio.processor.transform(wave, np.random.default_rng(0))["mel"])
    peaks = {int(m.mean(1).argmax()) - int(plain["mel"].mean(1).argmax()) for m in shifted}
    assert len(peaks) > 1 and all(abs(p) <= 4 for p in peaks)


def test_timm_cnn_encoder_pools_onto_the_patch_grid_and_hides_masked_input():
    audio = _audio(encoder="timm", backbone="test_convnext")
    batch = audio.processor.collate([audio.processor.transform(_noise(0, 8000)), audio.processor.transform(_noise(1, 3000))])
    with torch.no_grad():
        out = audio.encoder(batch)
    assert out.tokens.shape == (2, audio.encoder.num_patches, audio.encoder.embed_dim) and out.pooled.shape == (2, audio.encoder.embed_dim)
    assert torch.equal(out.padding_mask, audio.encoder.patch_padding_mask(batch))
    # whatever lies under masked patches cannot change the output: masking happens on the input
    mask = torch.zeros(2, audio.encoder.num_patches, dtype=torch.bool)
    mask[:, :3] = True
    edited = {k: v.clone() for k, v in batch.items()}
    edited["mel"][:, :16, :30] = 7.0  # the first three time patches of the lowest frequency row
    with torch.no_grad():
        assert torch.allclose(audio.encoder(batch, patch_mask=mask).tokens, audio.encoder(edited, patch_mask=mask).tokens)
        assert not torch.allclose(audio.encoder(batch).tokens, audio.encoder(edited).tokens)


def test_local_view_feeds_the_pooled_embedding_and_cannot_see_masked_patches():
    audio = _audio(local_patch_freq=8, local_patch_time=5)
    assert audio.encoder.local_grid == (4, 10)
    batch = audio.processor.collate([audio.processor.transform(_noise(0, 8000)), audio.processor.transform(_noise(1, 3000))])
    with torch.no_grad():
        out = audio.encoder(batch)
        # tokens stay the main grid's (masked modeling predicts from them); the local view
        # only joins the pooled embedding
        assert out.tokens.shape == (2, audio.encoder.num_patches, audio.encoder.embed_dim)
        assert torch.equal(out.padding_mask, audio.encoder.patch_padding_mask(batch))
        audio.encoder.local_embed.weight.mul_(2.0)
        assert not torch.allclose(audio.encoder(batch).pooled, out.pooled, atol=1e-4)
    # whatever lies under a masked main patch reaches neither view
    mask = torch.zeros(2, audio.encoder.num_patches, dtype=torch.bool)
    mask[:, :3] = True
    edited = {k: v.clone() for k, v in batch.items()}
    edited["mel"][:, :16, :30] = 7.0  # the first three time patches of the lowest frequency row
    with torch.no_grad():
        assert torch.allclose(audio.encoder(batch, patch_mask=mask).pooled, audio.encoder(edited, patch_mask=mask).pooled, atol=1e-6)
        assert not torch.allclose(audio.encoder(batch).pooled, audio.encoder(edited).pooled, atol=1e-3)
    # local patches wholly in padding after a short clip's end change nothing
    padded = {k: v.clone() for k, v in batch.items()}
    first_padded = -(-int(batch["valid_frames"][1]) // 10) * 10
    padded["mel"][1, :, first_padded:] = 5.0
    with torch.no_grad():
        assert torch.allclose(audio.encoder(batch).pooled[1], audio.encoder(padded).pooled[1], atol=1e-5)


@pytest.mark.parametrize("kw, match", [
    ({"local_patch_freq": 5, "local_patch_time": 10}, "must be positive and divide n_mels 32"),
    ({"local_patch_freq": 8}, "must be positive"),
    ({"encoder": "wav2vec2", "local_patch_freq": 8, "local_patch_time": 10}, "need encoder: spectrogram_transformer"),
])
def test_bad_local_patch_shapes_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        _audio(**kw)
