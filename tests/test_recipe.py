"""The shared training recipe and the phase files built on it (conf/defaults.yaml, conf/*.yaml)."""

import pytest
import torch

from codec.cli import CodecCLI
from codec.lr_schedule import WarmupExponentialLR

from helpers import CONF, TINY

PHASES = ["phase_1", "phase_2a", "phase_a", "phase_a_v2", "phase_b", "phase_b_ema", "waveform_l1"]


def parse(*files: str, overrides=()) -> CodecCLI:
    args = [a for f in files for a in ("-c", str(CONF / f"{f}.yaml"))]
    return CodecCLI(args=[*args, *overrides], run=False)


@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_inherits_the_shared_optimizer_schedule_and_clipping(phase):
    cli = parse(phase)
    config = cli.config
    optimizer = config["optimizer"]
    assert optimizer["class_path"] == "torch.optim.AdamW"
    assert list(optimizer["init_args"]["betas"]) == [0.8, 0.99]  # DAC
    assert config["lr_scheduler"]["class_path"] == "codec.lr_schedule.WarmupExponentialLR"
    assert config["lr_scheduler"]["init_args"]["gamma"] == 0.999996  # DAC's decay per step
    assert config["lr_scheduler"]["init_args"]["warmup_steps"] > 0
    assert config["lr_scheduler"]["init_args"]["cooldown_fraction"] == 0.2  # anneals into the last step
    assert config["trainer"]["gradient_clip_val"] == 1.0
    assert not cli.model.adversarial.enabled and cli.model.automatic_optimization


def test_mel_is_the_main_reconstruction_loss_of_the_report_phases():
    for phase in PHASES[:-1]:
        losses = parse(phase).config["model"]["losses"]
        assert losses["mel"] == 15.0 and losses["mel"] >= 10 * max(losses["stft"], losses["l1"]), phase


def test_phase_b_is_dacs_quantizer_and_phase_b_ema_the_hybrid():
    dac = parse("phase_b").model.quantizer
    assert (dac.normalization, dac.update) == ("l2", "gradient")
    level = dac.levels[0]
    assert level.dead_code_threshold == 0 and level.init == "random" and dac.commitment_weight == 0.25
    assert level.codebook_dim == 8 and isinstance(level.codebook, torch.nn.Parameter)  # learned by gradient
    assert parse("phase_b").config["model"]["losses"]["vq"] == 1.0  # codebook loss weight 1
    hybrid = parse("phase_b_ema").model.quantizer
    assert (hybrid.normalization, hybrid.update) == ("l2", "ema")
    assert hybrid.levels[0].init == "kmeans" and hybrid.levels[0].dead_code_threshold > 0


@pytest.mark.parametrize("phase", ["phase_1", "phase_b", "phase_2a"])
def test_gan_piece_turns_on_manual_optimization_and_moves_clipping_into_the_module(phase):
    cli = parse(phase, "gan")
    assert cli.config["trainer"]["gradient_clip_val"] is None  # Lightning refuses it under manual optimization
    model = cli.model
    assert model.discriminator is not None and not model.automatic_optimization
    assert model.adversarial.generator_clip_norm == 1.0 and model.adversarial.warmup_steps > 0
    assert model.codec.structure == parse(phase).model.codec.structure  # the phase itself is unchanged


def test_default_schedule_warms_up_then_decays():
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = WarmupExponentialLR(opt, warmup_steps=200, gamma=0.999996)
    assert sched.factor(0) == pytest.approx(1 / 200)
    assert sched.factor(199) == pytest.approx(0.999996 ** 199)
    assert sched.factor(2999) == pytest.approx(0.999996 ** 2999)  # -1.2 % at the end of a 3000-step run


def test_the_cooldown_falls_linearly_to_zero_over_the_last_part_of_the_run():
    opt = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = WarmupExponentialLR(opt, warmup_steps=200, gamma=0.999996, cooldown_fraction=0.2, total_steps=3000)
    assert sched.factor(2400) == pytest.approx(0.999996 ** 2400)  # every step before it is as without it
    assert sched.factor(2700) == pytest.approx(0.999996 ** 2700 * 0.5)
    assert sched.factor(2999) == pytest.approx(0.999996 ** 2999 / 600)
    # The run's length is not part of the saved state: a resumed, longer run cools down at its new end.
    assert "total_steps" not in sched.state_dict()
    with pytest.raises(ValueError, match="cooldown_fraction"):
        WarmupExponentialLR(opt, cooldown_fraction=1.0)


def test_the_cli_gives_the_cooldown_the_run_length_and_ends_at_a_small_rate(tmp_path):
    cli = CodecCLI(args=["fit", "-c", str(CONF / "waveform_l1.yaml"), *TINY, f"--run.root={tmp_path}",
                         "--trainer.max_steps=10", "--trainer.val_check_interval=10", "--run.diagnostics=false",
                         "--lr_scheduler.init_args.warmup_steps=1"])
    sched = cli.trainer.lr_scheduler_configs[0].scheduler
    assert sched.total_steps == 10
    # steps 8 and 9 of 10 are the cool-down (20 %); after the last step the rate is 0
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0)
    assert sched.get_last_lr()[0] == pytest.approx(0.0)
