"""Data: synthetic speech is deterministic and speech-like; folders are scanned, split and cropped
as documented; the data module serves (B, 1, S) batches of held-out validation data."""

import math
import re
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from codec.data import (
    AudioFolder,
    ResumableSampler,
    SkippedAudioWarning,
    SyntheticSpeech,
    split_folder,
)

SR = 16000
S = 8000  # 0.5 s at 16 kHz, the default segment


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as in DataLoader workers: these tensors are small, and on a busy
    machine a second thread only adds waiting (tens of times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rms_db(x: torch.Tensor) -> float:
    return 20 * math.log10(x.square().mean().sqrt().item())


def periodicity(x: torch.Tensor, sr: int = SR) -> float:
    """Peak normalized autocorrelation at pitch lags (80-320 Hz) of the loudest 40 ms frame."""
    frames = x.unfold(-1, int(0.04 * sr), int(0.01 * sr))
    frame = frames[frames.square().sum(-1).argmax()]
    frame = frame - frame.mean()
    lags = range(sr // 320, sr // 80 + 1)
    return max(
        float((frame[:-lag] @ frame[lag:]) / (frame[:-lag].norm() * frame[lag:].norm()))
        for lag in lags
    )


def spectral_flatness(x: torch.Tensor) -> float:
    window = torch.hann_window(512)
    power = torch.stft(x, 512, 128, window=window, return_complex=True).abs().square().mean(-1)
    power = power + 1e-12
    return float(power.log().mean().exp() / power.mean())


def sine(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- synthetic speech ----------------------------------------------------------------------------


def test_synthetic_items_are_a_pure_function_of_seed_and_index():
    first, second = SyntheticSpeech(16, seed=0), SyntheticSpeech(16, seed=0)
    assert torch.equal(first[5], second[5])
    assert torch.equal(first[5], first[5])
    assert not torch.equal(first[5], first[6])
    assert not torch.equal(first[5], SyntheticSpeech(16, seed=1)[5])


def test_synthetic_items_are_the_same_in_worker_processes():
    data = SyntheticSpeech(6)
    in_workers = torch.cat(list(DataLoader(data, batch_size=2, num_workers=2)))
    assert torch.equal(in_workers, torch.stack([data[i] for i in range(6)]))


@pytest.mark.parametrize(("sample_rate", "seconds"), [(16000, 0.5), (24000, 0.25)])
def test_synthetic_items_are_mono_float32_segments_within_full_scale(sample_rate, seconds):
    data = SyntheticSpeech(8, sample_rate=sample_rate, segment_seconds=seconds)
    for i in range(len(data)):
        item = data[i]
        assert item.shape == (1, round(sample_rate * seconds))
        assert item.dtype == torch.float32
        assert item.abs().max() <= 1.0
        assert item.abs().max() > 0
    with pytest.raises(IndexError):
        data[len(data)]


def test_synthetic_loudness_spans_at_least_30_db():
    data = SyntheticSpeech(64)
    levels = [rms_db(data[i]) for i in range(len(data))]
    assert max(levels) - min(levels) >= 30
    assert -46 <= min(levels) and max(levels) <= -9


def test_every_synthetic_item_holds_a_silence():
    data = SyntheticSpeech(32)
    for i in range(len(data)):
        item = data[i][0]
        frame_rms = item.unfold(0, 320, 80).square().mean(-1).sqrt()  # 20 ms frames, 5 ms hop
        assert (frame_rms < 0.01 * item.square().mean().sqrt()).any(), f"item {i} has no silence"


def test_synthetic_items_are_harmonic_not_noise():
    data = SyntheticSpeech(32)
    noise = torch.randn(S)
    assert periodicity(noise) < 0.3 and spectral_flatness(noise) > 0.9
    for i in range(len(data)):
        item = data[i][0]
        assert periodicity(item) > 0.5, f"item {i} has no clear pitch"
        assert spectral_flatness(item) < 0.3, f"item {i} is as flat as noise"


# --- audio folders -------------------------------------------------------------------------------


@pytest.fixture
def audio_dir(tmp_path):
    """Five readable files in three formats (one nested, one short), a corrupt wav, a text file."""
    root = tmp_path / "corpus"
    (root / "nested" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(root / "mono.wav", 0.1 * rng.standard_normal(SR).astype(np.float32), SR)
    stereo = np.stack([0.6 * sine(1000, 1.0, 44100, 1.0), 0.2 * sine(1000, 1.0, 44100, 1.0)], 1)
    sf.write(root / "stereo.flac", stereo, 44100)
    sf.write(root / "voice.ogg", sine(300, 1.0, SR), SR, format="OGG", subtype="VORBIS")
    sf.write(root / "nested" / "deeper" / "clip.WAV", sine(500, 0.8, SR), SR)
    sf.write(root / "short.wav", sine(200, 0.2, SR), SR, subtype="FLOAT")
    (root / "bad.wav").write_bytes(rng.bytes(3000))
    (root / "notes.txt").write_text("not audio")
    return root


READABLE = {"mono.wav", "stereo.flac", "voice.ogg", "nested/deeper/clip.WAV", "short.wav"}


def relative_names(dataset: AudioFolder) -> set[str]:
    return {f.relative for f in dataset.files}


def folder_quietly(root, **kwargs) -> AudioFolder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AudioFolder(root, **kwargs)


def test_folder_finds_audio_recursively_and_skips_a_corrupt_file_with_warnings(audio_dir):
    with pytest.warns(SkippedAudioWarning) as caught:
        train = AudioFolder(audio_dir, val_fraction=0.3)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedAudioWarning)]
    assert any("bad.wav" in m and "skipping" in m for m in messages)
    assert any(f"skipped 1 of 6 audio files in {audio_dir}: bad.wav" in m for m in messages)
    assert not any("notes.txt" in m for m in messages)
    assert [path.name for path, _ in train.skipped] == ["bad.wav"]
    assert train.skipped[0][1]  # a reason
    val = folder_quietly(audio_dir, split="val", val_fraction=0.3)
    assert relative_names(train) | relative_names(val) == READABLE


def test_folder_mixes_stereo_down_and_resamples_keeping_the_pitch(tmp_path):
    left, right = sine(1000, 1.0, 44100, 0.6), sine(1000, 1.0, 44100, 0.2)
    sf.write(tmp_path / "a.flac", np.stack([left, right], 1), 44100)
    item = AudioFolder(tmp_path, val_fraction=0.0, random_crop=False)[0]
    assert item.shape == (1, S) and item.dtype == torch.float32
    spectrum = torch.fft.rfft(item[0] * torch.hann_window(S)).abs()
    assert spectrum.argmax().item() * SR / S == pytest.approx(1000, abs=SR / S)
    middle = item[0, S // 4 : 3 * S // 4]  # away from the resampler's edges
    assert middle.abs().max().item() == pytest.approx(0.4, abs=0.02)  # the mean of 0.6 and 0.2


def test_folder_reads_ogg_vorbis(audio_dir):
    data = folder_quietly(audio_dir, val_fraction=0.0, random_crop=False)
    [(ogg, start)] = [(i, start) for i, start in data.crops if data.files[i].relative == "voice.ogg"]
    item = data._read(ogg, start)
    spectrum = torch.fft.rfft(item[0] * torch.hann_window(S)).abs()
    assert spectrum.argmax().item() * SR / S == pytest.approx(300, abs=SR / S)


def test_folder_errors_name_the_folder(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        AudioFolder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    with pytest.raises(FileNotFoundError) as error:
        AudioFolder(empty)
    assert str(empty) in str(error.value) and ".wav" in str(error.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.wav", "b.flac"):
        (broken / name).write_bytes(b"\x00garbage" * 100)
    with pytest.warns(SkippedAudioWarning), pytest.raises(ValueError) as error:
        AudioFolder(broken)
    assert str(broken) in str(error.value) and "all 2 were skipped" in str(error.value)


def test_split_is_deterministic_disjoint_and_complete(audio_dir):
    first = folder_quietly(audio_dir, split="val", val_fraction=0.3)
    again = folder_quietly(audio_dir, split="val", val_fraction=0.3)
    train = folder_quietly(audio_dir, split="train", val_fraction=0.3)
    assert [f.relative for f in first.files] == [f.relative for f in again.files]
    assert relative_names(first).isdisjoint(relative_names(train))
    assert relative_names(first) | relative_names(train) == READABLE


def test_split_keeps_at_least_one_file_on_each_side(audio_dir):
    assert len(folder_quietly(audio_dir, split="val", val_fraction=1e-6).files) >= 1
    assert len(folder_quietly(audio_dir, split="train", val_fraction=0.999).files) >= 1


def test_split_does_not_move_files_when_others_are_added(tmp_path):
    tone = sine(440, 0.05, SR)
    for i in range(20):
        sf.write(tmp_path / f"take{i:02d}.wav", tone, SR)
    before = relative_names(AudioFolder(tmp_path, split="val", val_fraction=0.3))
    for i in range(10):
        sf.write(tmp_path / f"extra{i:02d}.wav", tone, SR)
    after = relative_names(AudioFolder(tmp_path, split="val", val_fraction=0.3))
    assert 0 < len(before) < 20
    assert {name for name in after if name.startswith("take")} == before


def test_validation_crops_are_fixed_and_training_crops_random(tmp_path):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "long.wav", 0.1 * rng.standard_normal(3 * SR).astype(np.float32), SR)
    fixed = AudioFolder(tmp_path, val_fraction=0.0, random_crop=False, items_per_epoch=4)
    assert len(fixed) == 4
    crops = [fixed[i] for i in range(4)]
    assert all(torch.equal(a, fixed[i]) for i, a in enumerate(crops))
    assert len({start for _, start in fixed.crops}) == 4  # spread over the file, not repeated
    random = AudioFolder(tmp_path, val_fraction=0.0, random_crop=True, items_per_epoch=10)
    assert len(random) == 10
    assert not torch.equal(random[0], random[0])


def test_validation_crops_are_capped_by_items_per_epoch(audio_dir):
    data = folder_quietly(audio_dir, val_fraction=0.0, random_crop=False, items_per_epoch=3)
    assert len(data) == 3
    one_each = folder_quietly(audio_dir, val_fraction=0.0, random_crop=False)
    assert len(one_each) == len(READABLE)


def test_a_file_shorter_than_a_segment_is_zero_padded(tmp_path):
    short = sine(200, 0.2, SR)
    sf.write(tmp_path / "short.wav", short, SR, subtype="FLOAT")
    for random_crop in (False, True):
        item = AudioFolder(tmp_path, val_fraction=0.0, random_crop=random_crop)[0]
        assert item.shape == (1, S)
        assert torch.equal(item[0, : len(short)], torch.from_numpy(short))
        assert not item[0, len(short) :].any()


# --- data module ---------------------------------------------------------------------------------


def test_datamodule_defaults_to_synthetic_data_with_held_out_validation():
    from codec.data import AudioDataModule

    data = AudioDataModule(batch_size=4, train_items=10, val_items=6)
    data.setup("fit")
    assert data.sample_rate == SR
    train_batches = list(data.train_dataloader())
    assert len(train_batches) == 2  # drop_last: 10 items make two full batches of 4
    assert all(batch.shape == (4, 1, S) for batch in train_batches)
    val_batches = list(data.val_dataloader())
    assert [batch.shape[0] for batch in val_batches] == [4, 2]
    train_items = [data.train_set[i] for i in range(10)]
    for val_item in torch.cat(val_batches):
        assert not any(torch.equal(val_item, train_item) for train_item in train_items)


def test_datamodule_reads_a_folder_when_given_one(audio_dir):
    from codec.data import AudioDataModule

    data = AudioDataModule(
        data_dir=str(audio_dir), batch_size=2, train_items=6, val_items=3, val_fraction=0.3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedAudioWarning)
        data.setup("fit")
    assert isinstance(data.train_set, AudioFolder) and isinstance(data.val_set, AudioFolder)
    assert relative_names(data.train_set).isdisjoint(relative_names(data.val_set))
    assert len(data.val_set) <= 3
    assert [batch.shape for batch in data.train_dataloader()] == [(2, 1, S)] * 3
    assert all(batch.shape[1:] == (1, S) for batch in data.val_dataloader())


def test_datamodule_refuses_an_epoch_of_zero_steps():
    from codec.data import AudioDataModule

    data = AudioDataModule(batch_size=8, train_items=5)
    data.setup("fit")
    with pytest.raises(ValueError, match="batch_size"):
        data.train_dataloader()


def test_datamodule_keeps_workers_alive_between_epochs_only_when_it_has_workers():
    from codec.data import AudioDataModule

    for workers in (0, 2):
        data = AudioDataModule(num_workers=workers, train_items=16, val_items=4)
        data.setup("fit")
        loaders = [data.train_dataloader(), data.val_dataloader()]
        assert all(loader.num_workers == workers for loader in loaders)
        assert all(loader.persistent_workers == (workers > 0) for loader in loaders)
    assert data.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"  # no shuffle
    assert data.train_dataloader().sampler.__class__.__name__ == "ResumableSampler"


def test_datamodule_arguments_are_typed_and_documented_for_the_cli():
    from jsonargparse import ArgumentParser

    from codec.data import AudioDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(AudioDataModule, "data")
    config = parser.parse_args(["--data.data_dir=/audio", "--data.batch_size=4"])
    assert config.data.data_dir == "/audio" and config.data.batch_size == 4
    with pytest.raises(Exception, match="batch_size"):
        parser.parse_args(["--data.batch_size=many"])
    help_text = parser.format_help()
    assert "Share of the folder's files held out" in help_text  # docstring Args reach the help


# --- a folder's own split ------------------------------------------------------------------------


def tone_files(folder, count, prefix="take"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sf.write(folder / f"{prefix}{i}.wav", sine(200 + 50 * i, 0.6, SR), SR)


def test_train_and_val_subfolders_are_the_split(tmp_path):
    tone_files(tmp_path / "train", 5)
    tone_files(tmp_path / "val", 4)
    split = split_folder(tmp_path, val_fraction=0.5)
    assert sorted(f.relative for f in split.val) == [f"take{i}.wav" for i in range(4)]
    assert all(f.path.parent.name == "val" for f in split.val)
    assert all(f.path.parent.name == "train" for f in split.train) and len(split.train) == 5
    assert "own split" in split.describe() and "5 training files, 4 validation files" in split.describe()


def test_val_dir_validates_and_is_left_out_of_training_even_inside_data_dir(tmp_path):
    tone_files(tmp_path / "corpus", 3)
    tone_files(tmp_path / "corpus" / "held_out", 2, prefix="held")
    split = split_folder(tmp_path / "corpus", val_dir=tmp_path / "corpus" / "held_out")
    assert {f.path.name for f in split.val} == {"held0.wav", "held1.wav"}
    assert {f.path.name for f in split.train} == {"take0.wav", "take1.wav", "take2.wav"}
    assert "val_dir" in split.describe() and "3 training files, 2 validation files" in split.describe()


def test_hash_split_only_without_a_split_of_its_own_and_the_log_says_which(tmp_path, caplog):
    from codec.data import AudioDataModule

    tone_files(tmp_path / "flat", 6)
    (tmp_path / "flat" / "notes.txt").write_text("not audio")
    data = AudioDataModule(data_dir=str(tmp_path / "flat"), val_fraction=0.3, batch_size=2, train_items=4)
    with caplog.at_level("INFO"):
        data.setup("fit")
    line = data.split_description
    assert "hash split" in line and f"{len(data.train_set.files)} training files" in line
    assert "1 non-audio files ignored (notes.txt)" in line
    assert line in caplog.text
    own = AudioDataModule(data_dir=str(tmp_path / "own"), batch_size=2, train_items=4)
    tone_files(tmp_path / "own" / "train", 3)
    tone_files(tmp_path / "own" / "val", 2)
    own.setup("fit")
    assert len(own.train_set.files) == 3 and len(own.val_set.files) == 2


def test_a_broken_symlink_is_skipped_and_counted_by_name(tmp_path):
    tone_files(tmp_path, 2)
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    with pytest.warns(SkippedAudioWarning, match="gone.wav.*broken symbolic link"):
        split = split_folder(tmp_path, val_fraction=0.3)
    assert [(p.name, "broken" in reason) for p, reason in split.skipped] == [("gone.wav", True)]


# --- bad files found when read -------------------------------------------------------------------


def nan_wav(path, seconds=1.0):
    audio = sine(300, seconds, SR)
    audio[len(audio) // 2 : len(audio) // 2 + 100] = np.nan  # inside every crop of the file
    sf.write(path, audio, SR, subtype="FLOAT")


def corrupt_flac(path, seconds=3.0):
    sf.write(path, sine(300, seconds, SR), SR)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_the_scan_passes_nan_and_mid_file_corruption_that_reading_then_finds(tmp_path):
    nan_wav(tmp_path / "nan.wav")
    corrupt_flac(tmp_path / "broken_middle.flac")
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(tmp_path / "good.wav", sine(200, 3.0, SR), SR)
    data = folder_quietly(tmp_path, val_fraction=0.0, random_crop=False, items_per_epoch=12)
    assert len(data.files) == 4  # the cheap scan sees nothing wrong
    with pytest.warns(SkippedAudioWarning) as caught:
        skipped = dict((p.name, reason) for p, reason in data.check_fixed_crops())
    assert skipped == {"nan.wav": "NaN or inf samples", "broken_middle.flac": "unreadable",
                       "silent.wav": "digitally silent (all zero)"}
    messages = " ".join(str(w.message) for w in caught)
    assert "nan.wav" in messages and "100 NaN or inf samples" in messages and "lost sync" in messages
    assert {data.files[i].path.name for i, _ in data.crops} == {"good.wav"}  # crops dealt again
    assert all(torch.isfinite(data[i]).all() for i in range(len(data)))


def test_a_bad_training_crop_is_replaced_and_its_file_excluded_from_then_on(tmp_path):
    nan_wav(tmp_path / "a_nan.wav", seconds=0.5)  # as long as a segment: every crop holds the NaN
    sf.write(tmp_path / "b_good.wav", sine(200, 1.0, SR), SR)
    data = folder_quietly(tmp_path, val_fraction=0.0, random_crop=True, items_per_epoch=4)
    [nan_index] = [i for i, f in enumerate(data.files) if f.path.name == "a_nan.wav"]
    reads = []
    original = data._read
    data._read = lambda i, start: reads.append(i) or original(i, start)
    with pytest.warns(SkippedAudioWarning, match="a_nan.wav.*100 NaN or inf samples.*1 of 2 train files"):
        item = data[nan_index]
    assert torch.isfinite(item).all() and item.abs().max() > 0.1  # a crop of the good file instead
    assert reads == [nan_index, 1 - nan_index]
    reads.clear()
    for _ in range(5):
        data[nan_index]
    assert reads == [1 - nan_index] * 5  # never read again


def test_files_found_bad_in_dataloader_workers_are_known_to_the_main_process(tmp_path):
    for i in range(3):
        nan_wav(tmp_path / f"nan{i}.wav", seconds=0.5)  # every crop is the whole file: NaN every time
    sf.write(tmp_path / "good.wav", sine(200, 1.0, SR), SR)
    data = folder_quietly(tmp_path, val_fraction=0.0, random_crop=True, items_per_epoch=16)
    loader = DataLoader(data, batch_size=4, num_workers=2)
    batches = list(loader)
    assert all(torch.isfinite(b).all() for b in batches) and sum(len(b) for b in batches) == 16
    assert sorted(p.name for p, _ in data.bad.skipped()) == ["nan0.wav", "nan1.wav", "nan2.wav"]
    assert data.bad.good() == [i for i, f in enumerate(data.files) if f.path.name == "good.wav"]


def test_a_file_with_some_silence_is_kept_and_a_silent_file_skipped(tmp_path):
    audio = np.zeros(2 * SR, np.float32)
    audio[SR:] = sine(300, 1.0, SR)
    sf.write(tmp_path / "half_silent.wav", audio, SR)
    sf.write(tmp_path / "silent.wav", np.zeros(2 * SR, np.int16), SR, subtype="PCM_16")
    data = folder_quietly(tmp_path, val_fraction=0.0, random_crop=False, items_per_epoch=8)
    with pytest.warns(SkippedAudioWarning, match="silent.wav.*digital silence"):
        data.check_fixed_crops()
    assert [p.name for p, _ in data.bad.skipped()] == ["silent.wav"]
    assert {data.files[i].path.name for i, _ in data.crops} == {"half_silent.wav"}
    assert any(not data[i].any() for i in range(len(data)))  # its silent crops stay: silence is data


def test_every_validation_file_bad_leaves_no_validation_and_says_so(tmp_path):
    from codec.data import AudioDataModule

    tone_files(tmp_path / "train", 2)
    (tmp_path / "val").mkdir()
    corrupt_flac(tmp_path / "val" / "only.flac", seconds=1.0)
    data = AudioDataModule(data_dir=str(tmp_path), batch_size=2, train_items=4)
    with pytest.warns(UserWarning, match="NO VALIDATION.*only.flac"):
        data.setup("fit")
    assert data.val_dataloader() == []
    assert [p.name for p, _ in data.skipped_files()] == ["only.flac"]


# --- resumable order -----------------------------------------------------------------------------


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    sampler = ResumableSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(10))
    assert list(ResumableSampler(10, seed=4)) != first
    resumed = ResumableSampler(10, seed=3)
    resumed.resume(epoch=1, consumed=6)
    assert list(resumed) == second[6:]
    assert list(resumed) == second  # the skip applies once
    resumed.resume(epoch=0, consumed=4)
    resumed.set_epoch(1)  # Lightning moved on to the next epoch: nothing to skip there
    assert list(resumed) == second


def test_random_crops_are_a_function_of_the_draw_in_any_process(tmp_path):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "long.wav", 0.1 * rng.standard_normal(4 * SR).astype(np.float32), SR)
    data = AudioFolder(tmp_path, val_fraction=0.0, random_crop=True, items_per_epoch=8)
    sampler = ResumableSampler(8, seed=0, draws=True)
    keys = list(sampler)
    assert len({draw for _, draw in keys}) == 8
    in_main = torch.stack([data[key] for key in keys])
    assert torch.equal(in_main, torch.stack([data[key] for key in keys]))
    assert not torch.equal(in_main[0], in_main[1])
    in_workers = torch.cat(list(DataLoader(data, batch_size=2, sampler=sampler, num_workers=2)))
    assert torch.equal(in_workers, in_main)


def test_validation_files_that_go_bad_after_setup_give_silent_items_and_a_loud_warning(tmp_path):
    sf.write(tmp_path / "only.flac", sine(300, 3.0, SR), SR)
    from codec.data.folder import scan_folder

    files = scan_folder(tmp_path).readable
    data = AudioFolder(files=files, split="val", random_crop=False, items_per_epoch=6)
    assert data.check_fixed_crops() == [] and len(data) == 6  # crops tile the whole file
    corrupt_flac(tmp_path / "only.flac")  # replaced on disk mid-run by a file corrupt in the middle
    with pytest.warns(SkippedAudioWarning, match="EVERY validation file"):
        [data[i] for i in range(len(data))]
    assert [p.name for p, _ in data.bad.skipped()] == ["only.flac"]
    assert all(data[i].shape == (1, S) and not data[i].any() for i in range(len(data)))  # the run goes on
