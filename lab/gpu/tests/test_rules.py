"""lab/gpu/rules.py: the width, batch, compile and training-time rules on measured numbers."""

import math

from lab.gpu import rules

CH64, CH96 = 8_952_067, 20_118_915  # parameters of cifar10-gpu at width 64 and 96


def test_a_width_over_the_size_limit_is_never_chosen_however_fast():
    width, reason = rules.choose_width({64: 10_000, 96: 9_000}, {64: CH64, 96: CH96}, 300,
                                       target_images=2.5e6)  # fmt: skip
    assert width == 64 and "40.2 MB fp16 (over 20 MB)" in reason


def test_the_widest_width_that_fits_and_reaches_the_target_is_chosen():
    rates, params = {64: 12_000, 96: 9_000, 80: 8_000}, {64: CH64, 96: 9_000_000, 80: 9_500_000}
    assert rules.choose_width(rates, params, 300, target_images=2.5e6)[0] == 96
    # 96 no longer reaches 2.5M in 250 s (2.25M): the widest that does is 64
    assert rules.choose_width(rates, params, 250, target_images=2.5e6)[0] == 64
    # none reaches it: the fitting width that sees the most images
    assert rules.choose_width(rates, params, 100, target_images=2.5e6)[0] == 64
    assert rules.choose_width({96: 1.0}, {96: CH96}, 100, target_images=1)[0] == 96  # none fits


def test_the_smallest_batch_within_ten_percent_of_the_best_is_chosen():
    assert rules.choose_batch({256: 9_000, 512: 10_500, 1024: 11_000})[0] == 512
    assert rules.choose_batch({256: 10_000, 512: 10_500, 1024: 11_000})[0] == 256
    assert rules.choose_batch({256: 5_000, 512: 8_000, 1024: 11_000})[0] == 1024


def test_the_learning_rate_scales_with_the_square_root_of_the_batch_and_warmup_keeps_images():
    assert rules.batch_overrides(512, 1e-3, 200) == {"training.lr": 1e-3, "training.warmup": 200}
    scaled = rules.batch_overrides(1024, 1e-3, 200)
    assert math.isclose(scaled["training.lr"], 1e-3 * math.sqrt(2))
    assert scaled["training.warmup"] == 100
    assert rules.batch_overrides(256, 1e-3, 0)["training.warmup"] == 0


def test_compile_pays_only_when_the_images_gained_outweigh_the_compilation():
    assert rules.compile_pays(10_000, 15_000, 60, 300)  # 240 s at 15k > 300 s at 10k
    assert not rules.compile_pays(10_000, 12_000, 60, 300)  # 2.88M < 3.0M
    assert not rules.compile_pays(10_000, 15_000, 400, 300)


def test_training_time_is_what_the_deadline_leaves_and_never_below_the_least():
    assert rules.training_seconds(400, after=50, startup=20, least=30) == 330
    assert rules.training_seconds(60, after=50, startup=20, least=30) == 30
