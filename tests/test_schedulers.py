"""The sampling schedules: the release's (diffusers 0.34) and the newer diffusers one, owned by us."""

import pytest
import torch

from fourdnex_core.schedulers import SCHEDULES, flow_sigmas, flow_timesteps, make_scheduler, scheduler_for

# Numbers read off the release's code on diffusers 0.34 and ours on 0.42.1 (issue 10), shift 3.
RELEASE_3 = ([0.999666, 0.856775, 0.599640], [999, 856, 599])
DIFFUSERS_3 = ([0.999999, 0.857327, 0.600719], [999, 857, 600])


def test_schedule_names():
    assert SCHEDULES == ("release", "diffusers")
    with pytest.raises(ValueError, match="release, diffusers"):
        flow_sigmas(3, 3.0, "karras")


@pytest.mark.parametrize("schedule, expected", [("release", RELEASE_3), ("diffusers", DIFFUSERS_3)])
def test_three_step_sigmas_and_timesteps(schedule, expected):
    sigmas = flow_sigmas(3, 3.0, schedule)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (4,) and sigmas[-1] == 0.0
    torch.testing.assert_close(sigmas[:-1], torch.tensor(expected[0]), atol=1e-6, rtol=0)
    timesteps = flow_timesteps(3, 3.0, schedule, "unipc")
    assert timesteps.dtype == torch.int64 and timesteps.tolist() == expected[1]


def test_release_is_the_default_schedule():
    assert torch.equal(flow_sigmas(3), flow_sigmas(3, 3.0, "release"))
    assert flow_sigmas(3)[0].item() == pytest.approx(3 * 0.999 / (1 + 2 * 0.999), abs=1e-7)


def test_fifty_steps_differ_where_the_release_said():
    release, newer = flow_timesteps(50, 3.0, "release"), flow_timesteps(50, 3.0, "diffusers")
    assert release[-3:].tolist() == [160, 111, 57] and newer[-3:].tolist() == [162, 113, 60]
    assert int((release != newer).sum()) == 40 and int((release - newer).abs().max()) == 3
    for schedule in SCHEDULES:
        sigmas = flow_sigmas(50, 3.0, schedule)
        assert sigmas.shape == (51,) and sigmas[-1] == 0 and bool((sigmas[:-1] > sigmas[1:]).all())


def test_diffusers_schedule_is_what_the_installed_diffusers_builds():
    # The pinned diffusers (>= 0.37) is the reference for the "diffusers" schedule.
    for steps in (3, 50):
        reference = make_scheduler("unipc", 3.0)
        reference.set_timesteps(steps)
        torch.testing.assert_close(flow_sigmas(steps, 3.0, "diffusers"), reference.sigmas, atol=0, rtol=0)
        assert torch.equal(flow_timesteps(steps, 3.0, "diffusers"), reference.timesteps)


def test_euler_timesteps_are_float_sigma_times_1000():
    timesteps = flow_timesteps(3, 3.0, "release", "euler")
    assert timesteps.dtype == torch.float32
    torch.testing.assert_close(timesteps, flow_sigmas(3)[:-1] * 1000)
    with pytest.raises(ValueError, match="unipc, euler"):
        flow_timesteps(3, 3.0, "release", "ddim")


@pytest.mark.parametrize("sampler", ["unipc", "euler"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_scheduler_for_steps_on_our_schedule(sampler, schedule):
    scheduler = scheduler_for(sampler, 4, 3.0, schedule)
    assert torch.equal(scheduler.sigmas, flow_sigmas(4, 3.0, schedule))
    assert torch.equal(scheduler.timesteps, flow_timesteps(4, 3.0, schedule, sampler))
    # A constant velocity v carries x at the first sigma s to x - s * v (both solvers are exact on it).
    sample = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    start = sample.clone()
    for t in scheduler.timesteps:
        sample = scheduler.step(torch.full_like(sample, 0.3), t, sample, return_dict=False)[0]
    torch.testing.assert_close(sample, start - scheduler.sigmas[0] * 0.3, atol=1e-6, rtol=0)


def test_bad_steps_and_shift_are_refused():
    with pytest.raises(ValueError, match="at least 1 step"):
        flow_sigmas(0)
    with pytest.raises(ValueError, match="flow_shift must be positive"):
        flow_sigmas(3, 0.0)
