"""Audio examples at each validation (codec/callbacks/audio_examples.py) and `codec listen`'s page,
loaded in headless Chromium to check that its players and images really render."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.cli import main as codec_main
from codec.data import AudioDataModule
from codec.runs import load_run, read_metrics, series

from test_cli import fit

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    short = ["--trainer.max_steps=4", "--trainer.val_check_interval=2"]
    return fit(root, "phase_1", *short), fit(root, "phase_b", *short)


def test_every_validation_saves_input_and_decoded_audio_and_their_spectrograms(two_runs):
    run_dir = two_runs[0]
    validated = sorted({s for s, _ in series(read_metrics(run_dir), "val/audio/snr_db")})
    examples = load_run(run_dir).examples()
    assert sorted(examples) == validated == [0, 2, 4]  # one folder per validation (step 0 too), same steps
    data = AudioDataModule(train_items=16, val_items=8, batch_size=4)
    data.setup()
    for folder in examples.values():
        for i in range(2):  # diagnostics.examples.num_items defaults to 2: the first validation items
            source, rate = sf.read(folder / f"{i:02d}_input.wav")
            decoded = sf.read(folder / f"{i:02d}_decoded.wav")[0]
            assert rate == 16000 and sf.info(folder / f"{i:02d}_decoded.wav").subtype == "PCM_16"
            item = data.val_set[i].reshape(-1).numpy()
            assert len(source) == len(decoded) == len(item)
            assert np.abs(source - np.clip(item, -1, 1)).max() < 1e-4  # the validation item itself, 16-bit
            assert np.abs(decoded).max() > 0
            assert (folder / f"{i:02d}_spectrogram.png").read_bytes()[:8] == PNG
        assert not (folder / "02_input.wav").exists()


def test_examples_reach_wandb(tmp_path, monkeypatch):
    import wandb
    from wandb.sdk.wandb_run import Run

    sent, log = [], Run.log
    monkeypatch.setattr(Run, "log", lambda self, data, *a, **k: (sent.append(data), log(self, data, *a, **k))[1])
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        run_dir = fit(tmp_path, "phase_1", "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--run.wandb=true")
    finally:
        wandb.finish()
    *_, step = sorted(load_run(run_dir).examples())  # validated at steps 0 and 2: the media dict keeps the last
    media = {key: (data["trainer/global_step"], value) for data in sent for key, value in data.items()
             if key.startswith("val/examples/")}
    assert set(media) == {"val/examples/input", "val/examples/decoded", "val/examples/spectrogram"}
    assert all(s == step for s, _ in media.values())
    assert all(isinstance(a, wandb.Audio) for a in media["val/examples/decoded"][1])
    assert len(media["val/examples/decoded"][1]) == 2
    assert all(isinstance(i, wandb.Image) for i in media["val/examples/spectrogram"][1])


def test_listen_page_stands_alone(two_runs, tmp_path):
    out = tmp_path / "listen.html"
    with pytest.raises(SystemExit) as done:
        codec_main(["listen", *(str(d.parent) for d in two_runs), "--out", str(out)])
    assert done.value.code == 0
    html = out.read_text()
    sources = re.findall(r'<(audio|img)[^>]* src="([^"]+)"', html)
    # Both runs validated on the same items: the input once per item, then each run's decoded item.
    assert [tag for tag, _ in sources].count("audio") == 2 * (1 + 2)
    assert [tag for tag, _ in sources].count("img") == 2 * 2
    assert all(src.startswith(("data:audio/wav;base64,", "data:image/png;base64,")) for _, src in sources)
    assert "phase_1/version_0" in html and "phase_b/version_0" in html


# The probe polls until every <audio> has loaded its metadata (a duration) and every <img> is decoded
# (complete, natural width > 0), and records how many of each were ready; --dump-dom prints the DOM
# after the virtual time budget.
PROBE = """<script>
function probe() {
  const audio = [...document.querySelectorAll('audio')], images = [...document.querySelectorAll('img')];
  const playable = audio.filter(a => a.readyState >= 1 && a.duration > 0).length;
  const shown = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-probe', `audio ${playable}/${audio.length} img ${shown}/${images.length}`);
  if (playable < audio.length || shown < images.length) setTimeout(probe, 50);
}
window.addEventListener('load', probe);
</script></body>"""


def probe_in_chromium(html: str, tmp_path) -> dict[str, tuple[int, int]]:
    """Load a page with the probe in headless Chromium: {"audio": (playable, total), "img": (shown, total)}."""
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom"]
    dom = subprocess.run([CHROMIUM, *flags, probed.as_uri()], capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="audio (\d+)/(\d+) img (\d+)/(\d+)"', dom)
    assert found, f"the probe never ran: {dom[-2000:]}"
    counts = list(map(int, found.groups()))
    return {"audio": (counts[0], counts[1]), "img": (counts[2], counts[3])}


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install "
                                    "chromium; .ci/run installs it)")


@needs_chromium
def test_listen_page_renders_players_and_spectrograms_in_headless_chromium(two_runs, tmp_path):
    from codec.listen import page

    rendered = probe_in_chromium(page([load_run(d) for d in two_runs]), tmp_path)
    assert rendered == {"audio": (6, 6), "img": (4, 4)}  # 2 items: 1 input + 2 decoded players, 2 spectrograms


@needs_chromium
def test_a_broken_player_is_caught_by_the_probe(two_runs, tmp_path):
    """The Chromium check can fail: an audio element whose data is not audio does not count as rendered."""
    from codec.listen import page

    html = page([load_run(d) for d in two_runs]).replace("data:audio/wav;base64,", "data:audio/wav;base64,AAAA", 1)
    assert probe_in_chromium(html, tmp_path)["audio"] == (5, 6)


def test_examples_callback_has_no_side_effects_on_training(tmp_path):
    """Runs with and without audio examples train to the same weights (the extra forward is side-effect free)."""
    short = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--run.diagnostics=false"]
    without = fit(tmp_path / "a", "phase_1", *short)
    with_examples = fit(tmp_path / "b", "phase_1", *short, "--trainer.callbacks+=codec.callbacks.AudioExamples")
    assert load_run(with_examples).examples() and not load_run(without).examples()
    a = torch.load(without / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(with_examples / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
