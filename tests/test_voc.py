import io
import os

import numpy as np
import pytest
from conftest import list_ids
from PIL import Image

from mcof_tf.data.voc import (
    VOC_CLASSES,
    DatasetError,
    RejectedInput,
    VocDataset,
    check_id,
    decode_image,
    decode_label_png,
    parse_tags_xml,
    tags_from_mask,
    voc_palette,
)


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert tuple(pal[0]) == (0, 0, 0)
    assert tuple(pal[1]) == (128, 0, 0)  # aeroplane
    assert tuple(pal[15]) == (192, 128, 128)  # person
    assert tuple(pal[255]) == (224, 224, 192)  # void


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "/etc/passwd", "x/../../y", ".hidden", "a\\b"])
def test_ids_cannot_escape(bad):
    with pytest.raises(RejectedInput, match="invalid id"):
        check_id(bad)


def test_plain_ids_pass():
    assert check_id("2007_000032") == "2007_000032"
    assert check_id("img-1.v2") == "img-1.v2"


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_images_of_other_modes_are_converted(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8))
    im = (
        rgb.convert(mode)
        if mode != "I;16"
        else Image.fromarray((np.arange(99).reshape(9, 11) * 600).astype(np.uint16))
    )
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    arr, got_fmt, got_mode = decode_image(_encode(im, fmt))
    assert arr.shape == (9, 11, 3) and arr.dtype == np.uint8
    assert got_fmt == fmt and got_mode == mode


def test_transparent_pixels_become_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red under alpha 0 must not show
    arr, _, _ = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (arr == 255).all()


def test_truncated_and_non_images_are_rejected():
    good = _encode(Image.fromarray(np.full((64, 64, 3), 90, np.uint8)), "JPEG")
    with pytest.raises(RejectedInput, match="cannot be decoded"):
        decode_image(good[: len(good) // 2])
    with pytest.raises(RejectedInput, match="cannot be decoded"):
        decode_image(b"this is a text file, not a picture")
    with pytest.raises(RejectedInput, match="cannot be decoded"):
        decode_image(b"")


def test_label_png_palette_index_and_colour_forms():
    idx = np.array([[0, 1, 255], [2, 0, 1]], np.uint8)
    p = Image.fromarray(idx, "P")
    p.putpalette(voc_palette().reshape(-1).tolist())
    assert (decode_label_png(_encode(p, "PNG"), 21) == idx).all()
    assert (decode_label_png(_encode(Image.fromarray(idx, "L"), "PNG"), 21) == idx).all()
    colour = Image.fromarray(voc_palette()[idx])
    assert (decode_label_png(_encode(colour, "PNG"), 21) == idx).all()


def test_label_png_out_of_range_and_unknown_colour():
    idx = np.array([[0, 9]], np.uint8)
    with pytest.raises(RejectedInput, match="label 9 outside the 7 classes"):
        decode_label_png(_encode(Image.fromarray(idx, "L"), "PNG"), 7)
    odd = np.zeros((1, 2, 3), np.uint8)
    odd[0, 1] = (1, 2, 3)
    with pytest.raises(RejectedInput, match="colour"):
        decode_label_png(_encode(Image.fromarray(odd), "PNG"), 21)


def test_xml_tags_and_unknown_class():
    xml = (
        b"<annotation><object><name>dog</name></object><object><name>cat</name></object>"
        b"<object><name>dog</name></object></annotation>"
    )
    assert parse_tags_xml(xml, VOC_CLASSES) == [8, 12]
    with pytest.raises(RejectedInput, match="'zebra'"):
        parse_tags_xml(b"<annotation><object><name>zebra</name></object></annotation>", VOC_CLASSES)
    with pytest.raises(RejectedInput, match="not valid XML"):
        parse_tags_xml(b"<annotation><object>", VOC_CLASSES)


def test_tags_from_mask_skip_background_and_void():
    assert tags_from_mask(np.array([[0, 3, 255], [3, 5, 0]], np.uint8)) == [3, 5]


def test_dataset_reads_the_benchmark(tiny_root):
    ds = VocDataset(tiny_root)
    assert ds.classes[0] == "background" and ds.num_classes == 7  # from classes.txt
    ids = ds.split_ids("train")
    assert ids == list_ids(tiny_root)
    s = ds.load(ids[0])
    assert s.image.ndim == 3 and s.groundtruth.shape == s.image.shape[:2]
    assert s.tags == tags_from_mask(s.groundtruth)  # XML tags agree with the mask
    assert s.format == "jpeg" and s.encoded[:2] == b"\xff\xd8"


def test_dataset_level_errors(tmp_path, tiny_root):
    with pytest.raises(DatasetError, match="not a directory"):
        VocDataset(str(tmp_path / "missing"))
    with pytest.raises(DatasetError, match="does not exist"):
        VocDataset(tiny_root).split_ids("trainaug")
    with pytest.raises(DatasetError, match="invalid split"):
        VocDataset(tiny_root).split_ids("../train")
    (tmp_path / "classes.txt").write_text("background\n")
    with pytest.raises(DatasetError, match="at least one object class"):
        VocDataset(str(tmp_path))


def test_per_image_rejections(tiny_copy):
    ds = VocDataset(tiny_copy)
    ids = ds.split_ids("train")
    j = lambda *p: os.path.join(tiny_copy, *p)  # noqa: E731
    # a missing image
    with pytest.raises(RejectedInput, match="does not exist"):
        ds.load("no_such_image")
    # a mask of the wrong size
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(j("SegmentationClass", f"{ids[0]}.png"))
    with pytest.raises(RejectedInput, match="5x5 but the image is"):
        ds.load(ids[0])
    # no XML and a mask with only background: no tags
    os.remove(j("Annotations", f"{ids[1]}.xml"))
    h, w = ds.load(ids[1]).image.shape[:2]
    Image.fromarray(np.zeros((h, w), np.uint8)).save(j("SegmentationClass", f"{ids[1]}.png"))
    with pytest.raises(RejectedInput, match="no tags"):
        ds.load(ids[1])
    # no XML and no mask
    os.remove(j("SegmentationClass", f"{ids[1]}.png"))
    with pytest.raises(RejectedInput, match="neither"):
        ds.load(ids[1])


def test_ground_truth_is_optional(tiny_copy):
    ds = VocDataset(tiny_copy)
    i = ds.split_ids("train")[2]
    want = ds.load(i).tags
    os.remove(os.path.join(tiny_copy, "SegmentationClass", f"{i}.png"))
    s = ds.load(i)
    assert s.groundtruth is None and s.tags == want  # tags still come from the XML


def test_symlink_out_of_the_root_is_refused(tiny_copy, tmp_path):
    outside = tmp_path / "secret.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    os.symlink(outside, os.path.join(tiny_copy, "JPEGImages", "leak.jpg"))
    with pytest.raises(RejectedInput, match="outside the dataset root"):
        VocDataset(tiny_copy).load("leak")
