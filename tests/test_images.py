"""Bad and unusual image files: each handled or refused with the file named."""

import io

import numpy as np
import pytest
from PIL import Image

from vprkit.data.images import ImageError, list_images, load_image, resize_to_stride


def test_listing_is_recursive_sorted_and_relative(image_folder):
    names = list_images(image_folder)
    assert names == sorted(names) and "sub/000.png" in names and len(names) == 12


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


@pytest.mark.parametrize("content,match", [(b"", "empty file"), (b"not an image at all", "cannot decode")])
def test_broken_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=match) as err:
        load_image(path)
    assert "bad.jpg" in str(err.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG")
    path = tmp_path / "trunc.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="trunc.jpg"):
        load_image(path)


def test_pixel_limit_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (200, 200)).save(path)
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(path, max_pixels=100 * 100)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.fromarray((np.full((6, 8), 40000)).astype(np.uint16))
    path = tmp_path / f"x.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (8, 6)
    if mode == "I;16":  # 16-bit scaled to 8-bit: 40000 / 65535 * 255 = 155.6
        assert np.asarray(out)[0, 0, 0] == 155


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (20, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (10, 20)


def test_resize_to_stride_multiples():
    out = resize_to_stride(Image.new("RGB", (160, 120)), 322, 14)
    assert out.size == (322, 238) and out.size[0] % 14 == 0 and out.size[1] % 14 == 0


def test_resize_min_sets_the_short_side():
    # 160x120, short side -> 224: scale 224/120, width 298.7 -> nearest multiple of 14 = 294
    out = resize_to_stride(Image.new("RGB", (160, 120)), 322, 14, resize_min=224)
    assert out.size == (294, 224)


def _png(path) -> None:
    Image.fromarray((np.random.default_rng(len(str(path))).random((24, 32, 3)) * 255).astype(np.uint8)).save(
        path, format="PNG")


@pytest.mark.parametrize("bad", ["a\tb.png", "a\nb.png", "a\rb.png", "a\u2028b.png"])
def test_names_with_a_tab_or_line_break_are_refused_before_any_work(tiny_backbone, image_folder, tmp_path, capsys,
                                                                     bad):
    from vprkit.cli import main

    _png(image_folder / bad)
    out = tmp_path / "idx"
    assert main(["index", str(image_folder), "-o", str(out), "--preset", "mobilenetv2-gem"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and repr(str(image_folder / bad)) in err and "rename it" in err
    assert not out.exists() and not list(tmp_path.glob(".idx*"))  # nothing written, not even the work folder


def test_a_non_utf8_name_is_skipped_and_named_not_fatal(tiny_backbone, image_folder, tmp_path, caplog):
    import os

    from vprkit.cli import main
    from vprkit.evaluation.outputs import read_predictions

    bad = os.fsencode(image_folder) + b"/caf\xe9.png"
    _png(bad.decode("utf-8", "surrogateescape"))
    assert main(["index", str(image_folder), "-o", str(tmp_path / "idx"), "--preset", "mobilenetv2-gem"]) == 0
    assert "caf\\xe9.png" in caplog.text and "not valid UTF-8" in caplog.text
    assert main(["query", str(tmp_path / "idx"), str(image_folder), "--top-k", "3", "-o", str(tmp_path / "r")]) == 0
    q_names, m_names, _, _ = read_predictions(tmp_path / "r" / "predictions.txt")
    assert sorted(q_names) == list_images(image_folder) and len(q_names) == 12  # the 12 others, both ways
