"""Every image mode Pillow reads from a file becomes the right 8-bit RGB (image_io.load_image).

Each case writes a real file in a format that opens in that mode (checked), loads it and
compares with RGB values worked out by hand (colour formulas, not Pillow's conversions).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from fourdnex_core.image_io import image_to_tensor, load_image, to_rgb

WHITE = (255, 255, 255)


def _save(tmp_path, image: Image.Image, name: str, expected_mode: str, **options):
    path = tmp_path / name
    image.save(path, **options)
    with Image.open(path) as opened:
        assert opened.mode == expected_mode, f"{name} opens as {opened.mode}, the case needs {expected_mode}"
    return path


def _pixels(path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def _gray(values) -> np.ndarray:
    return np.repeat(np.asarray(values, int)[..., None], 3, axis=-1)


def test_16_bit_grayscale_png_keeps_its_tones(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    path = _save(tmp_path, Image.fromarray(values), "g16.png", "I;16")
    np.testing.assert_array_equal(_pixels(path), _gray([[0, 1, 128, 255]]))


def test_16_bit_big_endian_tiff(tmp_path):
    values = np.array([[0, 16384, 49152, 65535]], ">u2")
    path = _save(tmp_path, Image.frombytes("I;16B", (4, 1), values.tobytes()), "g16b.tif", "I;16B")
    np.testing.assert_array_equal(_pixels(path), _gray([[0, 64, 191, 255]]))


def test_16_bit_pgm_opens_as_i_and_is_scaled_from_65535(tmp_path):
    values = np.array([[0, 1000, 30000, 65535]], np.uint16)
    path = _save(tmp_path, Image.fromarray(values), "g16.pgm", "I")
    np.testing.assert_array_equal(_pixels(path), _gray(np.rint(values / 65535 * 255)))


def test_32_bit_integer_tiff_beyond_16_bits_is_scaled_by_its_maximum(tmp_path):
    values = np.array([[0, 100000, 200000]], np.int32)
    path = _save(tmp_path, Image.fromarray(values, "I"), "g32.tif", "I")
    np.testing.assert_array_equal(_pixels(path), _gray([[0, 128, 255]]))


def test_float_tiff_in_0_1_and_pfm_in_0_255(tmp_path):
    unit = np.array([[0.0, 0.25, 1.0]], np.float32)
    path = _save(tmp_path, Image.fromarray(unit, "F"), "unit.tif", "F")
    np.testing.assert_array_equal(_pixels(path), _gray([[0, 64, 255]]))
    byte_range = np.array([[0.0, 100.0, 255.0]], np.float32)
    path = _save(tmp_path, Image.fromarray(byte_range, "F"), "bytes.pfm", "F")
    np.testing.assert_array_equal(_pixels(path), _gray([[0, 100, 255]]))


def test_float_image_with_nan_is_refused_by_name(tmp_path):
    values = np.array([[0.0, np.nan, 1.0]], np.float32)
    path = _save(tmp_path, Image.fromarray(values, "F"), "nan.tif", "F")
    with pytest.raises(ValueError, match="1 NaN or infinite pixels"):
        load_image(path)


def test_bilevel_grayscale_and_palette(tmp_path):
    bits = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    np.testing.assert_array_equal(_pixels(_save(tmp_path, bits, "bits.png", "1")), _gray([[0, 255, 0]]))
    gray = Image.fromarray(np.array([[0, 77, 200]], np.uint8), "L")
    np.testing.assert_array_equal(_pixels(_save(tmp_path, gray, "gray.png", "L")), _gray([[0, 77, 200]]))
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    palette.putdata([0, 1, 2])
    np.testing.assert_array_equal(_pixels(_save(tmp_path, palette, "palette.png", "P")),
                                  [[[255, 0, 0], [0, 255, 0], [10, 20, 30]]])


def test_transparent_pixels_show_the_white_background_not_hidden_colours(tmp_path):
    # alpha 255, 0 and 128 over hidden colour (200, 0, 0)
    rgba = Image.fromarray(np.array([[[200, 0, 0, 255], [200, 0, 0, 0], [200, 0, 0, 128]]], np.uint8), "RGBA")
    blend = round(200 * 128 / 255 + 255 * 127 / 255), round(255 * 127 / 255)
    expected = [[[200, 0, 0], list(WHITE), [blend[0], blend[1], blend[1]]]]
    np.testing.assert_allclose(_pixels(_save(tmp_path, rgba, "rgba.png", "RGBA")), expected, atol=1)
    la = Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8), "LA")
    np.testing.assert_array_equal(_pixels(_save(tmp_path, la, "la.png", "LA")), [[[40] * 3, list(WHITE)]])
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 9, 9, 9] + [0] * (254 * 3))
    palette.putdata([0, 1])
    path = _save(tmp_path, palette, "transparent.png", "P", transparency=1)
    np.testing.assert_array_equal(_pixels(path), [[[0, 0, 255], list(WHITE)]])
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 255, 0] + [0] * 765)
    pa.putdata([(0, 255), (0, 0)])
    np.testing.assert_array_equal(_pixels(_save(tmp_path, pa, "pa.tif", "PA")), [[[0, 255, 0], list(WHITE)]])


def test_cmyk_ycbcr_and_lab_tiffs(tmp_path):
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 255, 255, 0), (0, 0, 0, 255), (0, 0, 0, 0)])  # red, black, white
    np.testing.assert_array_equal(_pixels(_save(tmp_path, cmyk, "cmyk.tif", "CMYK")),
                                  [[[255, 0, 0], [0, 0, 0], list(WHITE)]])
    ycbcr = Image.new("YCbCr", (1, 1), (81, 90, 240))
    y, cb, cr = 81, 90 - 128, 240 - 128  # JFIF: R = Y + 1.402 Cr, G = Y - .344 Cb - .714 Cr, B = Y + 1.772 Cb
    expected = [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb]
    np.testing.assert_allclose(_pixels(_save(tmp_path, ycbcr, "ycbcr.tif", "YCbCr"))[0, 0], expected, atol=1.5)
    lab = Image.new("LAB", (2, 1))
    lab.putdata([(255, 128, 128), (round(53.24 * 2.55), 128 + 80, 128 + 67)])  # white; sRGB red is Lab(53, 80, 67)
    pixels = _pixels(_save(tmp_path, lab, "lab.tif", "LAB"))
    np.testing.assert_allclose(pixels[0, 0], WHITE, atol=2)
    np.testing.assert_allclose(pixels[0, 1], [255, 0, 0], atol=12)


def test_hsv_and_rgbx_in_memory():
    hsv = Image.new("HSV", (2, 1))
    hsv.putdata([(0, 255, 255), (85, 255, 128)])  # red; hue 120 degrees at half value: dark green
    np.testing.assert_allclose(np.asarray(to_rgb(hsv)).astype(int), [[[255, 0, 0], [0, 128, 0]]], atol=1)
    rgbx = Image.new("RGBX", (1, 1), (1, 2, 3, 0))
    assert to_rgb(rgbx).getpixel((0, 0)) == (1, 2, 3)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((4, 8, 3), np.uint8)
    array[:, :4] = (255, 0, 0)  # left half red, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the stored image rotated 90 degrees clockwise
    path = tmp_path / "turned.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=100)
    pixels = _pixels(path)
    assert pixels.shape == (8, 4, 3)  # upright: 4 wide, 8 tall
    assert pixels[1, 1, 0] > 200 and pixels[-2, 1, 0] < 50  # the stored left half is now on top


def test_image_to_tensor_maps_a_16_bit_pil_image_right():
    image = Image.fromarray(np.array([[0, 65535]], np.uint16))
    torch.testing.assert_close(image_to_tensor(image)[:, 0], torch.tensor([[0.0, 1.0]] * 3))
