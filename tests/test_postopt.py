"""Post-optimization on synthetic scenes with known cameras, intrinsics and depth."""

import logging

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from fourdnex_core.geometry.cameras import (
    cams2world_matrix,
    intrinsics_matrix,
    pixel_grid,
    pixel_rays,
    project,
    rotation_angle_degrees,
)
from fourdnex_core.geometry.postopt import decoded_xyz_to_scene, post_optimize
from fourdnex_core.geometry.synthetic import make_synthetic_scene

FRAMES, HEIGHT, WIDTH = 7, 30, 45


def rotation_errors(result, scene) -> torch.Tensor:
    """Per-frame angle (degrees) between fitted and true camera rotations."""
    return rotation_angle_degrees(result.cams2world[:, :3, :3].double(), scene.cams2world[:, :3, :3].double())


def focal_errors(result, scene) -> torch.Tensor:
    """Relative error of fx and fy per frame, [F, 2]."""
    fitted = torch.stack((result.intrinsics[:, 0, 0], result.intrinsics[:, 1, 1]), dim=-1).double()
    return (fitted / scene.K[0, 0].double() - 1).abs()


def depth_errors(result, scene) -> torch.Tensor:
    """Relative depth errors over the pixels that are valid and not outliers."""
    usable = result.valid & ~scene.outliers
    return ((result.depth.double() - scene.depth.double()).abs() / scene.depth.double())[usable]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_free_scene_is_recovered_exactly(dtype):
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, seed=1, dtype=dtype)
    result = post_optimize(scene.xyz)
    assert result.depth.dtype == dtype and result.cams2world.dtype == dtype
    assert float(rotation_errors(result, scene).max()) < 0.01
    assert float(focal_errors(result, scene).max()) < 1e-3
    assert float(depth_errors(result, scene).max()) < 1e-3
    torch.testing.assert_close(result.K[:2, 2], scene.K[:2, 2])
    translation_error = (result.cams2world[:, :3, 3] - scene.cams2world[:, :3, 3]).norm(dim=-1)
    assert float(translation_error.max()) < 1e-3
    assert float(result.residuals.max()) < 1e-4


def test_noise_and_outliers_stay_within_one_degree_and_two_percent():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, noise=0.01, outlier_fraction=0.05, seed=2)
    result = post_optimize(scene.xyz)
    assert float(rotation_errors(result, scene).max()) < 1.0
    assert float(focal_errors(result, scene).max()) < 0.02
    assert float(depth_errors(result, scene).median()) < 0.02


def test_robust_loss_beats_plain_least_squares_on_outliers():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, noise=0.005, outlier_fraction=0.1, seed=4)
    robust = post_optimize(scene.xyz, robust="cauchy")
    plain = post_optimize(scene.xyz, robust="none")
    assert float(rotation_errors(robust, scene).mean()) < float(rotation_errors(plain, scene).mean())
    assert float(focal_errors(robust, scene).mean()) < float(focal_errors(plain, scene).mean())


def test_nan_and_inf_points_are_masked_counted_and_never_propagated():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, invalid_fraction=0.1, seed=3)
    assert not bool(torch.isfinite(scene.xyz).all())
    result = post_optimize(scene.xyz)
    assert torch.equal(result.valid, scene.valid)
    assert result.num_invalid.tolist() == (~scene.valid).flatten(1).sum(dim=1).tolist()
    for field in (result.intrinsics, result.cams2world, result.depth, result.points, result.point_errors,
                  result.residuals):
        assert bool(torch.isfinite(field).all())
    assert bool((result.depth[~scene.valid] == 0).all())
    assert float(rotation_errors(result, scene).max()) < 0.01
    assert float(depth_errors(result, scene).max()) < 1e-3


def test_mask_drops_pixels():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, outlier_fraction=0.3, seed=5)
    result = post_optimize(scene.xyz, mask=~scene.outliers, robust="none")
    assert torch.equal(result.valid, ~scene.outliers)
    assert result.num_invalid.tolist() == scene.outliers.flatten(1).sum(dim=1).tolist()
    assert float(rotation_errors(result, scene).max()) < 0.01, "with outliers masked, plain least squares is exact"


def test_low_confidence_on_outliers_recovers_what_no_confidence_cannot():
    """Half the points are outliers: the robust loss alone fails, confidence weighting does not."""
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, noise=0.005, outlier_fraction=0.5, seed=4)
    confidence = torch.where(scene.outliers, 0.01, 1.0)
    weighted = post_optimize(scene.xyz, confidence)
    unweighted = post_optimize(scene.xyz)
    assert torch.equal(weighted.valid, scene.valid), "low confidence weights a point, it does not drop it"
    assert float(rotation_errors(weighted, scene).max()) < 0.5
    assert float(focal_errors(weighted, scene).max()) < 0.01
    assert float(depth_errors(weighted, scene).median()) < 0.01
    assert float(rotation_errors(unweighted, scene).max()) > 10 * float(rotation_errors(weighted, scene).max())
    assert float(focal_errors(unweighted, scene).max()) > 10 * float(focal_errors(weighted, scene).max())


def test_zero_nan_and_low_confidence_mark_points_invalid_and_are_counted():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, seed=5)
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(scene.xyz.shape[:3], generator=generator) + 0.5
    confidence[:, :3] = 0.0
    confidence[:, -2:, :5] = torch.nan
    confidence[:, 10, :7] = 0.2
    expected = torch.ones_like(confidence, dtype=torch.bool)
    expected[:, :3] = expected[:, -2:, :5] = False
    result = post_optimize(scene.xyz, confidence)
    assert torch.equal(result.valid, expected)
    assert result.num_invalid.tolist() == [3 * WIDTH + 2 * 5] * FRAMES
    assert bool((result.depth[~expected] == 0).all())
    assert float(rotation_errors(result, scene).max()) < 0.01
    thresholded = post_optimize(scene.xyz, confidence, min_confidence=0.3)
    expected[:, 10, :7] = False
    assert torch.equal(thresholded.valid, expected)
    assert thresholded.num_invalid.tolist() == [3 * WIDTH + 2 * 5 + 7] * FRAMES


def test_a_bool_mask_and_a_confidence_of_one_give_the_same_result():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, noise=0.01, outlier_fraction=0.1, seed=6)
    mask = torch.ones(scene.xyz.shape[:3], dtype=torch.bool)
    mask[:, :, :4] = False
    from_mask, from_confidence = post_optimize(scene.xyz, mask), post_optimize(scene.xyz, mask.float())
    assert torch.equal(from_mask.cams2world, from_confidence.cams2world)
    assert torch.equal(from_mask.depth, from_confidence.depth)


def test_callback_sees_every_iteration_with_its_cost():
    scene = make_synthetic_scene(3, HEIGHT, WIDTH, noise=0.01, seed=7)
    calls = []
    result = post_optimize(scene.xyz, callback=lambda iteration, cost: calls.append((iteration, cost)))
    assert result.iterations > 0
    assert [iteration for iteration, _ in calls] == list(range(1, result.iterations + 1))
    assert all(cost > 0 and cost < float("inf") for _, cost in calls)


def test_no_camera_is_assumed_to_be_the_identity():
    """Moving, rotating and scaling the XYZ world moves the cameras the same way; K is unchanged."""
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, seed=6, dtype=torch.float64)
    rotation = axis_angle_to_rotation_matrix(torch.tensor([[0.4, -0.9, 0.3]], dtype=torch.float64))[0]
    shift, scale = torch.tensor([3.0, -2.0, 10.0], dtype=torch.float64), 7.5
    moved = scale * scene.xyz @ rotation.T + shift
    result = post_optimize(moved)
    transform = cams2world_matrix(scale * rotation, shift)
    expected = transform @ scene.cams2world
    expected[:, :3, :3] /= scale
    torch.testing.assert_close(result.cams2world, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(result.K, scene.K)
    torch.testing.assert_close(result.depth, scale * scene.depth)


def test_registered_points_lie_on_their_pixel_rays():
    scene = make_synthetic_scene(3, HEIGHT, WIDTH, noise=0.02, seed=8, dtype=torch.float64)
    result = post_optimize(scene.xyz)
    uv, depth = project(result.points.reshape(3, -1, 3), result.K, result.cams2world)
    torch.testing.assert_close(uv, pixel_grid(HEIGHT, WIDTH, dtype=torch.float64).reshape(1, -1, 2).expand_as(uv))
    torch.testing.assert_close(depth, result.depth.reshape(3, -1))
    torch.testing.assert_close(result.point_errors, (result.points - scene.xyz).norm(dim=-1))


def test_residuals_match_the_noise_level():
    """The fitted cameras explain noisy XYZ about as well as the true cameras do, not better by much."""
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, noise=0.01, seed=9, dtype=torch.float64)
    result = post_optimize(scene.xyz)
    rays = torch.einsum("fij,hwj->fhwi", scene.cams2world[:, :3, :3], pixel_rays(scene.K, HEIGHT, WIDTH))
    offsets = scene.xyz - scene.cams2world[:, None, None, :3, 3]
    along = (offsets * rays).sum(-1, keepdim=True) / (rays * rays).sum(-1, keepdim=True)
    true_distances = (offsets - along * rays).norm(dim=-1)
    true_residuals = true_distances.flatten(1).median(dim=1).values
    assert bool((result.residuals <= 1.05 * true_residuals).all())
    assert bool((result.residuals >= 0.8 * true_residuals).all())


def test_free_principal_point_is_recovered():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, principal_point=(25.0, 12.0), seed=10, dtype=torch.float64)
    result = post_optimize(scene.xyz, fix_principal_point=False)
    torch.testing.assert_close(result.K, scene.K)
    fixed = post_optimize(scene.xyz, fix_principal_point=True, zoom=False)
    torch.testing.assert_close(fixed.K[:2, 2], torch.tensor([(WIDTH - 1) / 2, (HEIGHT - 1) / 2], dtype=torch.float64))
    assert fixed.camera_model.principal_point == "image centre" and fixed.camera_model.from_data == ()
    chosen = post_optimize(scene.xyz)  # the default decides from the data
    torch.testing.assert_close(chosen.K, scene.K)
    assert chosen.camera_model.principal_point == "fitted" and chosen.camera_model.from_data == ("principal point",)


def test_per_frame_focal_when_not_shared():
    """Frames from two scenes with different lenses: each frame gets its own focal."""
    wide = make_synthetic_scene(3, HEIGHT, WIDTH, focal=30.0, seed=11, dtype=torch.float64)
    tele = make_synthetic_scene(3, HEIGHT, WIDTH, focal=60.0, seed=12, dtype=torch.float64)
    result = post_optimize(torch.cat((wide.xyz, tele.xyz)), share_focal=False)
    expected = torch.tensor([30.0] * 3 + [60.0] * 3, dtype=torch.float64)
    torch.testing.assert_close(result.intrinsics[:, 0, 0], expected)
    torch.testing.assert_close(result.intrinsics[:, 1, 1], expected)
    with pytest.raises(ValueError, match="per frame"):
        _ = result.K


def test_known_focal_is_kept():
    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, noise=0.01, seed=13)
    focal = float(scene.K[0, 0])
    result = post_optimize(scene.xyz, focal=focal)
    assert float(result.K[0, 0]) == pytest.approx(focal) and float(result.K[1, 1]) == pytest.approx(focal)
    assert float(rotation_errors(result, scene).max()) < 1.0


def planar_scene(frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A tilted plane seen by a panning, sliding camera. Returns (xyz, K, camera rotations)."""
    K = intrinsics_matrix(*(torch.tensor(value, dtype=torch.float64) for value in (40.0, 40.0, 22.0, 14.5)))
    axis_angle = torch.zeros(frames, 3, dtype=torch.float64)
    axis_angle[:, 1] = torch.linspace(0.0, 0.2, frames)
    rotation = axis_angle_to_rotation_matrix(axis_angle)
    translation = torch.zeros(frames, 3, dtype=torch.float64)
    translation[:, 0] = torch.linspace(0.0, 0.5, frames)
    directions = torch.einsum("fij,hwj->fhwi", rotation, pixel_rays(K, HEIGHT, WIDTH))
    normal, offset = torch.tensor([0.0, 0.6, -0.8], dtype=torch.float64), -3.0
    along = (offset - translation @ normal)[:, None, None] / (directions @ normal)
    return translation[:, None, None] + along[..., None] * directions, K, rotation


def test_planar_scene_is_recovered():
    """All points on one plane: no linear camera exists, so focal and poses come from plane homographies."""
    xyz, K, rotation = planar_scene(5)
    result = post_optimize(xyz)
    assert float(rotation_angle_degrees(result.cams2world[:, :3, :3], rotation).max()) < 0.01
    torch.testing.assert_close(result.K, K)
    assert bool((result.depth > 0).all())


def test_planar_and_solid_frames_together_with_noise():
    planar_xyz, K, planar_rotation = planar_scene(4)
    solid = make_synthetic_scene(4, HEIGHT, WIDTH, focal=40.0, seed=18, dtype=torch.float64)
    xyz = torch.cat((solid.xyz, planar_xyz))
    generator = torch.Generator().manual_seed(0)
    noisy = xyz + 0.01 * xyz[..., 2:].abs() * torch.randn(xyz.shape, generator=generator, dtype=torch.float64)
    result = post_optimize(noisy)
    truth = torch.cat((solid.cams2world[:, :3, :3], planar_rotation))
    assert float(rotation_angle_degrees(result.cams2world[:, :3, :3], truth).max()) < 1.0
    assert abs(float(result.K[0, 0]) / 40.0 - 1) < 0.02


def test_mirrored_xyz_is_reported(caplog):
    scene = make_synthetic_scene(3, HEIGHT, WIDTH, seed=14)
    mirrored = scene.xyz * torch.tensor([1.0, -1.0, 1.0])
    with caplog.at_level(logging.WARNING, logger="fourdnex_core.geometry.postopt"):
        post_optimize(mirrored)
    assert "mirrored" in caplog.text and "y down" in caplog.text


def test_decoded_xyz_conventions():
    decoded = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25]])
    torch.testing.assert_close(decoded_xyz_to_scene(decoded), torch.tensor([[-1.0, 0.0, 1.0], [1.0, -1.0, -0.5]]))
    torch.testing.assert_close(decoded_xyz_to_scene(decoded, "release"),
                               torch.tensor([[-0.5, 0.0, 1.0], [0.5, -0.5, 0.25]]))
    with pytest.raises(ValueError, match="channels last"):
        decoded_xyz_to_scene(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="'paper' or 'release'"):
        decoded_xyz_to_scene(decoded, "opengl")


def test_release_convention_only_changes_scale_and_offset():
    scene = make_synthetic_scene(4, HEIGHT, WIDTH, seed=15, dtype=torch.float64)
    decoded = (scene.xyz / 10.0 + 1.0) / 2.0
    paper = post_optimize(decoded_xyz_to_scene(decoded, "paper"))
    release = post_optimize(decoded_xyz_to_scene(decoded, "release"))
    torch.testing.assert_close(release.K, paper.K)
    torch.testing.assert_close(release.cams2world[:, :3, :3], paper.cams2world[:, :3, :3])
    shift = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(release.cams2world[:, :3, 3], paper.cams2world[:, :3, 3] / 2 + shift)
    torch.testing.assert_close(release.depth, paper.depth / 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda xyz: post_optimize(xyz[0]), r"\[F, H, W, 3\]"),
        (lambda xyz: post_optimize(xyz.to(torch.int32)), "float tensor"),
        (lambda xyz: post_optimize(xyz, mask=torch.ones(2, 3, 4, dtype=torch.bool)), "mask must be"),
        (lambda xyz: post_optimize(xyz, robust="tukey"), "Unknown robust loss"),
        (lambda xyz: post_optimize(xyz, mask=-torch.ones(xyz.shape[:3])), "Confidence must be finite and >= 0"),
        (lambda xyz: post_optimize(xyz, mask=torch.ones(xyz.shape[:3], dtype=torch.bool), min_confidence=0.5),
         "needs a float confidence map"),
        (lambda xyz: post_optimize(xyz, min_confidence=0.5), "needs a float confidence map"),
        (lambda xyz: post_optimize(xyz, mask=torch.ones(xyz.shape[:3]), min_confidence=-1.0),
         "min_confidence must be >= 0"),
        (lambda xyz: post_optimize(xyz, focal=-3.0), "focal must be a positive"),
        (lambda xyz: post_optimize(torch.where(torch.arange(2)[:, None, None, None] == 1, torch.nan, xyz)),
         r"Frames \[1\] have fewer than"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    xyz = make_synthetic_scene(2, 12, 18, seed=16).xyz
    with pytest.raises(ValueError, match=message):
        call(xyz)


def test_flat_point_maps_are_refused_with_a_reason_not_a_linear_algebra_error():
    xyz = torch.zeros(2, 12, 16, 3)
    xyz[:, :4] = torch.randn(2, 4, 16, 3)  # a third of the points spread out, the rest at the origin
    with pytest.raises(ValueError, match=r"sit at one place \(0.0, 0.0, 0.0\).*flat or empty"):
        post_optimize(xyz, iterations=3)


def test_sampled_solve_draws_distinct_usable_pixels_and_stays_exact():
    """Frames much larger than the sample: pixels are drawn at random, never reading every pixel."""
    from fourdnex_core.geometry.postopt.sampling import draw_samples

    scene = make_synthetic_scene(FRAMES, HEIGHT, WIDTH, invalid_fraction=0.2, seed=21)
    mask = torch.ones(scene.xyz.shape[:3], dtype=torch.bool)
    mask[:, :, :10] = False
    samples = draw_samples(scene.xyz, mask, 0.0, 64, seed=3)
    assert samples.index.shape == (FRAMES, 64) and bool((samples.weights == 1).all())
    usable = (scene.valid & mask).flatten(1)
    assert bool(torch.gather(usable, 1, samples.index).all())
    assert all(len(set(row.tolist())) == 64 for row in samples.index)
    result = post_optimize(scene.xyz, mask, max_points_per_frame=64)
    assert torch.equal(result.valid, scene.valid & mask)
    assert float(rotation_errors(result, scene).max()) < 0.01
    assert float(focal_errors(result, scene).max()) < 1e-3


def test_mostly_masked_frames_fall_back_to_every_pixel():
    from fourdnex_core.geometry.postopt.sampling import draw_samples

    scene = make_synthetic_scene(3, HEIGHT, WIDTH, seed=22)
    mask = torch.zeros(scene.xyz.shape[:3], dtype=torch.bool)
    mask[:, 5:9, 10:30] = True  # 80 of 1350 pixels: too few among random draws
    samples = draw_samples(scene.xyz, mask, 0.0, 64, seed=0)
    assert bool(torch.gather(mask.flatten(1), 1, samples.index).all())
    assert all(len(set(row.tolist())) == 64 for row in samples.index)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("bad", [torch.nan, torch.inf, -torch.inf])
def test_one_bad_coordinate_makes_a_pixel_invalid_under_an_axis_aligned_camera(axis, bad):
    """The full-image pass finds non-finite points through their error; a camera with exact zeros
    in its rotation (the identity) must not hide them."""
    from fourdnex_core.geometry.postopt.result import PostOptResult

    scene = make_synthetic_scene(2, HEIGHT, WIDTH, seed=23)
    xyz = scene.xyz.clone()
    xyz[1, 4, 7, axis] = bad
    intrinsics = torch.tensor([[40.0, 40.0, 22.0, 14.5]]).expand(2, 4)
    result = PostOptResult.from_cameras(xyz, None, 0.0, intrinsics, torch.eye(3).expand(2, 3, 3), torch.zeros(2, 3),
                                        shared_intrinsics=True, iterations=0)
    expected = torch.ones(2, HEIGHT, WIDTH, dtype=torch.bool)
    expected[1, 4, 7] = False
    assert torch.equal(result.valid, expected)
    assert float(result.depth[1, 4, 7]) == 0.0 and float(result.point_errors[1, 4, 7]) == 0.0
    assert bool(torch.isfinite(result.residuals).all())


@pytest.mark.parametrize("part", ["intrinsics", "rotation", "translation"])
def test_a_diverged_camera_is_named_as_such_not_blamed_on_the_input(part):
    """Finite XYZ with a non-finite fitted camera (the solve diverged on that frame) gets an error that
    says so, instead of "fewer than 16 usable points (the rest are non-finite)"."""
    from fourdnex_core.geometry.postopt.result import PostOptResult

    scene = make_synthetic_scene(3, HEIGHT, WIDTH, seed=25)
    cameras = {"intrinsics": torch.tensor([[40.0, 40.0, 22.0, 14.5]]).repeat(3, 1),
               "rotation": torch.eye(3).repeat(3, 1, 1), "translation": torch.zeros(3, 3)}
    cameras[part][1].view(-1)[0] = torch.nan
    with pytest.raises(ValueError, match=r"diverged on frames \[1\]"):
        PostOptResult.from_cameras(scene.xyz, None, 0.0, cameras["intrinsics"], cameras["rotation"],
                                   cameras["translation"], shared_intrinsics=False, iterations=0)


def test_a_freedom_whose_fit_runs_the_focal_away_is_not_supported():
    """A zoom fitted on XYZ that is no view of a scene (random weights: seen in the native workflow's
    run) reached fx 5e-40 and fy 2e222 px; such a fit must never be chosen."""
    from fourdnex_core.geometry.postopt.models import plausible_focal_change
    from fourdnex_core.geometry.postopt.problem import State

    def state(focals):
        focals = torch.tensor(focals, dtype=torch.float64)
        intrinsics = torch.stack([focals, focals, torch.full_like(focals, 22.0), torch.full_like(focals, 14.5)], -1)
        return State(rotation=torch.eye(3).repeat(len(focals), 1, 1), translation=torch.zeros(len(focals), 3),
                     intrinsics=intrinsics)

    before = state([40.0, 40.0, 40.0])
    assert plausible_focal_change(before, state([40.0, 52.0, 30.0]))  # a real zoom
    assert not plausible_focal_change(before, state([40.0, 4.7e-40, 40.0]))
    assert not plausible_focal_change(before, state([40.0, 2.3e222, 40.0]))
    assert not plausible_focal_change(before, state([40.0, float("nan"), 40.0]))


def test_the_default_model_is_kept_when_it_fits_noisy_data():
    scene = make_synthetic_scene(13, 60, 90, noise=0.01, outlier_fraction=0.05, seed=24)
    result = post_optimize(scene.xyz)
    model = result.camera_model
    assert (model.principal_point, model.focal, model.from_data) == ("image centre", "shared", ())
    assert set(model.evidence) == {"principal point", "zoom"}
    assert result.shared_intrinsics and float(rotation_errors(result, scene).max()) < 0.5


def test_an_off_centre_principal_point_and_unequal_focals_are_fitted_from_the_data():
    principal_point, focal = (44.5 + 3.0, 29.5 - 2.0), (78.0, 78.0 * 1.02)
    clean = make_synthetic_scene(13, 60, 90, principal_point=principal_point, focal=focal, seed=25,
                                 dtype=torch.float64)
    result = post_optimize(clean.xyz)
    assert result.camera_model.from_data == ("principal point",) and result.camera_model.focal == "shared"
    torch.testing.assert_close(result.K, clean.K)
    assert float(rotation_errors(result, clean).max()) < 1e-6
    noisy = make_synthetic_scene(13, 60, 90, principal_point=principal_point, focal=focal, noise=0.01,
                                 outlier_fraction=0.05, seed=25)
    result = post_optimize(noisy.xyz)
    assert result.camera_model.principal_point == "fitted"
    assert float((result.K[:2, 2] - noisy.K[:2, 2]).abs().max()) < 1.0
    assert float(rotation_errors(result, noisy).max()) < 0.5
    assert float(rotation_errors(post_optimize(noisy.xyz, fix_principal_point=True, zoom=False), noisy).max()) > 1.0


def test_a_zoom_gets_a_focal_per_frame_from_the_data():
    clean = make_synthetic_scene(13, 60, 90, zoom=1.3, seed=26, dtype=torch.float64)
    result = post_optimize(clean.xyz)
    assert result.camera_model.from_data == ("zoom",) and result.camera_model.focal == "zoom"
    assert not result.shared_intrinsics
    torch.testing.assert_close(result.intrinsics, clean.intrinsics)
    torch.testing.assert_close(result.depth, clean.depth)
    noisy = make_synthetic_scene(13, 60, 90, zoom=1.3, noise=0.01, outlier_fraction=0.05, seed=26)
    result = post_optimize(noisy.xyz)
    assert result.camera_model.focal == "zoom"
    assert float(focal_errors_per_frame(result, noisy).max()) < 0.02
    assert float(rotation_errors(result, noisy).max()) < 0.5


def focal_errors_per_frame(result, scene) -> torch.Tensor:
    """Relative error of fx and fy of each frame against that frame's true K, [F, 2]."""
    fitted = torch.stack((result.intrinsics[:, 0, 0], result.intrinsics[:, 1, 1]), dim=-1).double()
    truth = torch.stack((scene.intrinsics[:, 0, 0], scene.intrinsics[:, 1, 1]), dim=-1).double()
    return (fitted / truth - 1).abs()


def test_zoom_cannot_go_with_a_known_focal():
    xyz = make_synthetic_scene(2, 12, 18, seed=16).xyz
    with pytest.raises(ValueError, match="zoom=True"):
        post_optimize(xyz, zoom=True, focal=20.0)
