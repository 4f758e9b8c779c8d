"""Adversarial training: warm-up, step counting, which gradients reach what, optimizers and schedules."""

import importlib.util

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from codec.adversarial import (
    AdversarialConfig,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from codec.cli import CodecCLI
from codec.lr_schedule import WarmupExponentialLR
from codec.model import QuantizerConfig, StructureConfig
from codec.model.discriminator import Discriminator
from codec.module import CodecModule

from helpers import CONF, TINY

SMALL_DISC = dict(periods=[2, 3], period_channels=[4, 8], fft_sizes=[256], stft_channels=4)


def small_module(warmup_steps=3, **adversarial):
    return CodecModule(
        structure=StructureConfig(channels=4, strides=[2, 4, 5], latent_dim=16),
        quantizer=QuantizerConfig(num_quantizers=2, codebook_size=16, dead_code_threshold=0.0),
        adversarial=AdversarialConfig(enabled=True, warmup_steps=warmup_steps, **SMALL_DISC, **adversarial))


class Recorder(L.Callback):
    """What a monitor sees: one on_train_batch_end per batch, with the global step at that time."""

    def __init__(self):
        self.steps, self.disc_weights = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(trainer.global_step)
        self.disc_weights.append([p.detach().clone() for p in pl_module.discriminator.parameters()])


def fit(module, steps, callbacks=()):
    data = torch.randn(64, 1, 4000) * 0.1
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(module, DataLoader(data, batch_size=4))
    return trainer


def test_the_discriminator_waits_for_warm_up_and_global_step_counts_codec_steps_only():
    recorder = Recorder()
    module = small_module(warmup_steps=3)
    trainer = fit(module, steps=6, callbacks=[recorder])
    # One callback call per batch, one global step per batch: the discriminator's steps are not counted.
    assert recorder.steps == [1, 2, 3, 4, 5, 6] and trainer.global_step == 6
    initial = recorder.disc_weights[0]
    for weights in recorder.disc_weights[:3]:  # batches at global steps 0, 1, 2: warm-up
        assert all(torch.equal(a, b) for a, b in zip(weights, initial, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(recorder.disc_weights[3], initial, strict=True))
    codec_opt, disc_opt = trainer.optimizers
    assert codec_opt.state[next(module.codec.parameters())]["step"] == 6
    assert disc_opt.state[next(module.discriminator.parameters())]["step"] == 3


def test_the_codec_optimizer_holds_no_discriminator_parameter():
    module = small_module()
    trainer = fit(module, steps=1)
    codec_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    disc_params = {id(p) for g in trainer.optimizers[1].param_groups for p in g["params"]}
    assert codec_params == {id(p) for p in module.codec.parameters()}
    assert disc_params == {id(p) for p in module.discriminator.parameters()}


def test_without_adversarial_training_the_module_uses_automatic_optimization():
    module = CodecModule(structure=StructureConfig(channels=4, strides=[2, 4, 5], latent_dim=16),
                         quantizer=QuantizerConfig(num_quantizers=2, codebook_size=16))
    assert module.automatic_optimization and module.discriminator is None


@pytest.mark.parametrize("kind", ["least_squares", "hinge"])
def test_generator_loss_reaches_the_codec_and_discriminator_loss_does_not(kind):
    torch.manual_seed(0)
    disc = Discriminator(**SMALL_DISC)
    codec_out = (torch.randn(2, 1, 4000) * 0.1).requires_grad_()
    target = torch.randn(2, 1, 4000) * 0.1
    d_loss = discriminator_loss(disc(target), disc(codec_out.detach()), kind)
    d_loss.backward()
    assert codec_out.grad is None
    assert all(p.grad is not None for p in disc.parameters()) and sum(p.grad.abs().sum() for p in disc.parameters()) > 0
    disc.zero_grad()
    disc.requires_grad_(False)  # what the module's toggle_optimizer does in the codec step
    fake = disc(codec_out)
    with torch.no_grad():
        real = disc(target)
    (generator_loss(fake, kind) + feature_matching_loss(real, fake)).backward()
    assert codec_out.grad is not None and codec_out.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())


def test_loss_values_on_planted_logits():
    ones, zeros = [[torch.ones(3)]], [[torch.zeros(3)]]
    assert discriminator_loss(ones, zeros, "least_squares") == 0  # a perfect discriminator
    assert generator_loss(ones, "least_squares") == 0 and generator_loss(zeros, "least_squares") == 1
    assert discriminator_loss([[torch.full((3,), 2.0)]], [[torch.full((3,), -2.0)]], "hinge") == 0
    assert discriminator_loss(zeros, zeros, "hinge") == 2
    features = [[torch.ones(4), torch.zeros(1)]]
    assert feature_matching_loss(features, [[torch.full((4,), 3.0), torch.ones(1)]]) == 2  # logits left out


def test_relative_feature_matching_weighs_every_map_alike():
    # Two maps 100x apart in scale, each 10 % off: DAC's sum is ruled by the loud one, EnCodec's
    # relative form gives each map its 0.1 and averages.
    real = [[torch.full((4,), 100.0), torch.zeros(1)], [torch.ones(4), torch.zeros(1)]]
    fake = [[torch.full((4,), 110.0), torch.ones(1)], [torch.full((4,), 0.9), torch.ones(1)]]
    assert torch.isclose(feature_matching_loss(real, fake, "l1"), torch.tensor(10.1))
    assert torch.isclose(feature_matching_loss(real, fake, "relative"), torch.tensor(0.1))
    with pytest.raises(ValueError, match="feature_matching"):
        AdversarialConfig(feature_matching="l2")


def test_the_magnitude_spectrogram_discriminator_is_blind_to_phase_and_still_passes_a_gradient():
    # -x has the magnitude spectrum of x and the opposite phase: DAC's complex discriminator tells them
    # apart, UnivNet's magnitude discriminator cannot; its gradient still reaches the audio it judges.
    torch.manual_seed(0)
    audio = (torch.randn(2, 1, 4000) * 0.1).requires_grad_()
    for spectrogram, blind in (("complex", False), ("magnitude", True)):
        disc = Discriminator(periods=[], fft_sizes=[256], stft_channels=4, spectrogram=spectrogram,
                             peak_normalize=False)
        same = [torch.allclose(a, b, atol=1e-6) for a, b in zip(disc(audio)[0], disc(-audio)[0], strict=True)]
        assert all(same) == blind and any(same) == blind
    generator_loss(disc(audio), "least_squares").backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="adversarial.spectrogram"):
        AdversarialConfig(spectrogram="phase")


class CodecGradients(L.Callback):
    """The codec's gradients as its optimizer is about to step (after the adversarial terms)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if optimizer is trainer.optimizers[0]:
            self.grads = {name: p.grad.clone() for name, p in pl_module.codec.named_parameters()
                          if p.grad is not None}


def first_step_codec_gradients(**adversarial):
    torch.manual_seed(0)
    recorder = CodecGradients()
    fit(small_module(warmup_steps=0, generator_clip_norm=None, **adversarial), steps=1, callbacks=[recorder])
    return recorder.grads


@pytest.mark.parametrize("train_encoder", [True, False])
def test_train_encoder_off_keeps_adversarial_gradients_out_of_the_encoder(train_encoder):
    reconstruction_only = first_step_codec_gradients(generator_weight=0.0, feature_matching_weight=0.0,
                                                     train_encoder=train_encoder)
    adversarial = first_step_codec_gradients(train_encoder=train_encoder)
    encoder = [n for n in adversarial if n.startswith(("encoder.", "pre_rvq_conv."))]
    # out_proj.bias only offsets DC, which the discriminator removes before judging: no gradient from it.
    decoder = [n for n in adversarial if n.startswith(("decoder.", "out_proj.")) and n != "out_proj.bias"]
    assert encoder and decoder and set(adversarial) == set(reconstruction_only)
    same = {n: torch.allclose(adversarial[n], reconstruction_only[n], rtol=1e-5, atol=1e-8) for n in adversarial}
    # The decoder side learns from the discriminator either way; the encoder only when train_encoder is on.
    assert not any(same[n] for n in decoder)
    assert all(same[n] for n in encoder) == (not train_encoder)


def test_the_module_trains_with_the_configured_feature_matching_form():
    # Feature matching alone (no adversarial term): the form the config names must reach the codec's step.
    dac = first_step_codec_gradients(generator_weight=0.0, feature_matching="l1")
    relative = first_step_codec_gradients(generator_weight=0.0, feature_matching="relative")
    assert not torch.allclose(dac["decoder.net.0.weight"], relative["decoder.net.0.weight"], rtol=1e-5, atol=1e-8)


def test_adversarial_weight_is_zero_in_warm_up_then_ramps():
    cfg = AdversarialConfig(warmup_steps=10, ramp_steps=4)
    assert [cfg.weight(s) for s in (0, 9, 10, 11, 13, 100)] == [0, 0, 0.25, 0.5, 1, 1]
    with pytest.raises(ValueError, match="adversarial.loss"):
        AdversarialConfig(loss="wasserstein")


def test_warmup_exponential_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = WarmupExponentialLR(opt, warmup_steps=4, gamma=0.5)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5 * 0.5, 0.75 * 0.25, 0.125, 0.0625, 0.03125])


def test_cli_optimizer_and_schedule_drive_the_codec_per_step_in_both_modes(tmp_path):
    for extra in ([], ["-c", str(CONF / "gan.yaml"), "--model.adversarial.warmup_steps=2",
                       "--model.adversarial.periods=[2]", "--model.adversarial.fft_sizes=[256]"]):
        cli = CodecCLI(args=["fit", "-c", str(CONF / "phase_1.yaml"), *extra, *TINY, f"--run.root={tmp_path}",
                             "--trainer.max_steps=4", "--trainer.val_check_interval=4", "--run.diagnostics=false",
                             "--optimizer.init_args.lr=0.004", "--lr_scheduler.init_args.warmup_steps=8",
                             "--lr_scheduler.init_args.gamma=1.0", "--lr_scheduler.init_args.cooldown_fraction=0"])
        codec_opt = cli.trainer.optimizers[0]
        assert {id(p) for g in codec_opt.param_groups for p in g["params"]} == {id(p) for p in cli.model.codec.parameters()}
        # after 4 steps of an 8-step warm-up to 0.004: the schedule stepped per step, not per epoch
        assert codec_opt.param_groups[0]["lr"] == pytest.approx(0.004 * 5 / 8)
        assert cli.trainer.global_step == 4


def test_a_resumed_adversarial_run_continues_both_optimizers(tmp_path):
    data = DataLoader(torch.randn(64, 1, 4000) * 0.1, batch_size=4)

    def trainer(steps):
        return L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", limit_val_batches=0, default_root_dir=tmp_path,
                         callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)])

    torch.manual_seed(0)
    trainer(4).fit(small_module(warmup_steps=2), data)
    resumed = trainer(6)
    resumed.fit(small_module(warmup_steps=2), data, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.global_step == 6
    codec_opt, disc_opt = resumed.optimizers
    first = next(iter(disc_opt.state.values()))
    assert next(iter(codec_opt.state.values()))["step"] == 6 and first["step"] == 4  # 2 + 2 after warm-up
    assert disc_opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.999996 ** 4)


def test_warm_up_steps_are_the_steps_of_the_same_run_without_a_discriminator(tmp_path):
    """The discriminator's init draws from a copy of the random state, and warm-up steps are
    generator-only: after warm-up the codec is the no-GAN run's codec, so the runs are paired."""
    common = ["-c", str(CONF / "phase_1.yaml"), *TINY, "--trainer.max_steps=6", "--trainer.val_check_interval=6",
              "--run.diagnostics=false", "--seed_everything=3"]

    def gan_run(warmup_steps):
        return CodecCLI(args=["fit", *common, "-c", str(CONF / "gan.yaml"), "--model.adversarial.periods=[2]",
                              f"--model.adversarial.warmup_steps={warmup_steps}", "--model.adversarial.fft_sizes=[256]",
                              f"--run.root={tmp_path / str(warmup_steps)}"]).model.codec.state_dict()

    plain = CodecCLI(args=["fit", *common, f"--run.root={tmp_path / 'plain'}"]).model.codec.state_dict()
    assert all(torch.equal(value, plain[name]) for name, value in gan_run(6).items())
    # the control: with the discriminator on from step 3, the codec's last steps differ
    assert not all(torch.equal(value, plain[name]) for name, value in gan_run(3).items())


class RateRecorder(L.Callback):
    """Both optimizers' learning rates as each batch starts, by global step."""

    def __init__(self):
        self.codec, self.discriminator = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        codec_opt, disc_opt = trainer.optimizers
        self.codec[trainer.global_step] = codec_opt.param_groups[0]["lr"]
        self.discriminator[trainer.global_step] = disc_opt.param_groups[0]["lr"]


@pytest.mark.parametrize("cooldown", [True, False])
def test_the_discriminator_cools_down_with_the_codec_when_asked(tmp_path, cooldown):
    recorder = RateRecorder()
    cli = CodecCLI(args=["-c", str(CONF / "phase_1.yaml"), "-c", str(CONF / "gan.yaml"), *TINY,
                         f"--run.root={tmp_path}", "--trainer.max_steps=10", "--trainer.val_check_interval=10",
                         "--run.diagnostics=false", "--model.adversarial.warmup_steps=2",
                         "--model.adversarial.periods=[2]", "--model.adversarial.fft_sizes=[256]",
                         f"--model.adversarial.cooldown={str(cooldown).lower()}", "--model.adversarial.lr_decay=1.0",
                         "--lr_scheduler.init_args.warmup_steps=0", "--lr_scheduler.init_args.gamma=1.0",
                         "--lr_scheduler.init_args.cooldown_fraction=0.4"], run=False)
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    base_codec, base_disc = cli.config.optimizer.init_args.lr, cli.config.model.adversarial.lr
    codec = [recorder.codec[s] / base_codec for s in range(10)]
    disc = [recorder.discriminator[s] / base_disc for s in range(2, 10)]  # its steps: after warm-up
    # The codec falls linearly to 0 over the last 4 of the 10 steps; the discriminator, when asked,
    # over the same steps of the run (its own step count starts 2 steps later).
    assert codec == pytest.approx([1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert disc == (pytest.approx(codec[2:]) if cooldown else pytest.approx([1.0] * 8))



def test_a_discriminator_cool_down_without_the_codecs_cool_down_schedule_is_rejected(tmp_path):
    cli = CodecCLI(args=["-c", str(CONF / "phase_1.yaml"), "-c", str(CONF / "gan.yaml"), *TINY,
                         f"--run.root={tmp_path}", "--trainer.max_steps=2", "--run.diagnostics=false",
                         "--model.adversarial.cooldown=true", "--lr_scheduler=torch.optim.lr_scheduler.ExponentialLR",
                         "--lr_scheduler.init_args.gamma=0.99"], run=False)
    with pytest.raises(ValueError, match="adversarial.cooldown follows the codec's cool-down.*got ExponentialLR"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_the_dac_balance_piece_holds_dacs_ratios_in_this_labs_mel_units():
    """conf/gan_dac_balance.yaml is DAC's mel : adversarial : feature-matching balance only while
    this lab's mel loss is ~14x smaller than DAC's: a change to MultiScaleMelLoss's scales or power
    changes that factor, and this fails until the piece's weights are measured again."""
    spec = importlib.util.spec_from_file_location("dac_mel_units", CONF.parent / "scripts" / "dac_mel_units.py")
    units = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(units)
    ratios = [dac / ours for ours, dac in units.measure(items=16).values()]
    factor = sum(ratios) / len(ratios)
    assert 10 < min(ratios) and max(ratios) < 18  # 2 (power) x 7 summed scales, less the clamp's effect

    mel_weight = yaml.safe_load((CONF / "defaults.yaml").read_text())["model"]["losses"]["mel"]
    piece = yaml.safe_load((CONF / "gan_dac_balance.yaml").read_text())["model"]["adversarial"]
    dac = units.DAC_WEIGHTS
    # each adversarial weight against the mel weight, with DAC's mel expressed in this lab's units
    for key, dac_key in (("generator_weight", "adversarial"), ("feature_matching_weight", "feature_matching")):
        assert piece[key] / mel_weight == pytest.approx(dac[dac_key] / (dac["mel"] * factor), rel=0.1)
