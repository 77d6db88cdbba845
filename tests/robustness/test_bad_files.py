"""A folder of real photos mixed with hundreds of bad files of many kinds, made here: every
good photo (odd formats and odd names included) is indexed, every bad file is reported with
its reason, nothing crashes or hangs, and a second run changes nothing."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from tests.robustness.helpers import ARTIFACTS, check_index, cli, cli_json

PER_KIND = 15  # bad files of each kind
OVERSIZE = 257 * 2**20  # just over the default --max-file-mb 256 (sparse: costs no disk)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (valid) compressed stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0/SOF2) is patched to claim width x height."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data) - 9:
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no frame header found")


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _write(path: Path | bytes, data: bytes) -> None:
    """Write through os.open so that `path` may be a bytes name that is not UTF-8."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_folder(root: Path, photos: dict[str, Path], outside: Path) -> tuple[dict, dict]:
    """Fill `root`; returns (good: rel path -> kind, bad: rel path -> kind)."""
    rng = random.Random(18)
    root.mkdir()
    outside.mkdir()
    real = {name: Image.open(path).convert("RGB") for name, path in photos.items()}
    jpegs = [_encoded(img, "JPEG", quality=85) for img in real.values()]
    pngs = [_encoded(img, "PNG") for img in real.values()]
    good: dict[str, str] = {}
    bad: dict[str, str] = {}

    def add(kinds: dict, rel: str | bytes, kind: str, data: bytes | None = None) -> None:
        path = os.path.join(os.fsencode(root), os.fsencode(rel))
        if data is not None:
            _write(path, data)
        kinds[os.fsdecode(rel)] = kind

    # -- good: real photos, also in odd formats and under odd names ---------------------
    for path in photos.values():
        add(good, path.name, "photo", path.read_bytes())
    cat, coffee, astronaut = real["chelsea"], real["coffee"], real["astronaut"]
    add(good, "cmyk.jpg", "cmyk jpeg", _encoded(coffee.convert("CMYK"), "JPEG"))
    gray16 = Image.fromarray(np.asarray(cat.convert("L"), np.uint16) * 257)  # mode I;16
    add(good, "gray16.png", "16-bit png", _encoded(gray16, "PNG"))
    palette = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    add(good, "palette.png", "palette png with transparency", _encoded(palette, "PNG", transparency=0))
    frames = [cat.resize((160, 120)), coffee.resize((160, 120)), astronaut.resize((160, 120))]
    add(good, "animated.gif", "animated gif",
        _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0))
    add(good, "rgba.png", "rgba png", _encoded(astronaut.convert("RGBA"), "PNG"))
    add(good, "la.png", "gray+alpha png", _encoded(cat.convert("LA"), "PNG"))
    add(good, "gray.jpg", "grayscale jpeg", _encoded(coffee.convert("L"), "JPEG"))
    add(good, "bilevel.png", "1-bit png", _encoded(cat.convert("1"), "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    add(good, "rotated.jpg", "exif-rotated jpeg", _encoded(astronaut, "JPEG", exif=exif.tobytes()))
    add(good, "tiny.png", "1x1 png", _encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"))
    add(good, "progressive.jpg", "progressive jpeg", _encoded(cat, "JPEG", progressive=True))
    add(good, "UPPER.JPG", "upper-case extension", jpegs[1])
    add(good, "photo.tiff", "tiff", _encoded(coffee, "TIFF"))
    add(good, "photo.webp", "webp", _encoded(cat, "WEBP"))
    add(good, "photo.bmp", "bmp", _encoded(astronaut.resize((200, 200)), "BMP"))
    add(good, b"caf\xe9-latin1.jpg", "non-utf-8 name", jpegs[2])
    add(good, b"\xff\xfe-raw.png", "non-utf-8 name", pngs[3])
    add(good, "new\nline.jpg", "name with a newline", jpegs[0])
    add(good, "quotes \"'` and spaces.png", "name with quotes", pngs[1])
    add(good, "-dash; $(rm -rf x) & | > <.jpg", "name with shell characters", jpegs[3])
    add(good, "ünïcödé 猫 🐈.jpg", "unicode name", jpegs[0])
    (root / "album.jpg").mkdir()  # a directory named like an image is walked, not read
    add(good, "album.jpg/inside.png", "photo in a directory named .jpg", pngs[4])
    os.symlink("chelsea.png", root / "link-inside.png")
    good["link-inside.png"] = "symbolic link inside the folder"
    add(good, "copy-of-coffee.png", "duplicate content", photos["coffee"].read_bytes())

    # -- bad: PER_KIND of each kind -----------------------------------------------------
    (outside / "elsewhere.jpg").write_bytes(jpegs[0])
    for i in range(PER_KIND):
        j, p = rng.choice(jpegs), rng.choice(pngs)
        add(bad, f"truncated-{i}.jpg", "truncated jpeg", j[: int(len(j) * rng.uniform(0.2, 0.9))])
        add(bad, f"truncated-{i}.png", "truncated png", p[: int(len(p) * rng.uniform(0.2, 0.9))])
        add(bad, f"empty-{i}{rng.choice(['.jpg', '.png', '.webp', '.gif', '.tif'])}",
            "zero bytes", b"")
        add(bad, f"random-{i}{rng.choice(['.jpg', '.png', '.bmp', '.webp'])}", "random bytes",
            rng.randbytes(rng.randint(1, 50_000)))
        add(bad, f"page-{i}.jpg", "html named .jpg",
            f"<!doctype html><html><body><img src='x{i}.jpg'></body></html>".encode())
        add(bad, f"bomb-{i}.png", "decompression bomb", _png_header(20_000 + 1000 * i, 20_000))
        add(bad, f"huge-{i}.jpg", "huge dimensions header", _jpeg_with_size(j, 65_000, 60_000 + i))
        add(bad, f"vector-{i}.png", "svg named .png",
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
        add(bad, f"archive-{i}.jpg", "zip named .jpg", b"PK\x03\x04" + rng.randbytes(200))
        add(bad, f"document-{i}.jpg", "pdf named .jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + rng.randbytes(100))
        broken = bytearray(p)
        k = len(p) // 2
        broken[k:k + 16] = rng.randbytes(16)
        add(bad, f"bad-crc-{i}.png", "png with a damaged chunk", bytes(broken))
        gif = _encoded(frames[i % 3], "GIF")
        add(bad, f"cut-{i}.gif", "truncated gif", gif[: rng.randint(13, 40)])
        tif = _encoded(frames[i % 3], "TIFF")
        add(bad, f"cut-{i}.tif", "truncated tiff", tif[: rng.randint(8, 60)])
        webp = _encoded(frames[i % 3], "WEBP")
        add(bad, f"cut-{i}.webp", "truncated webp", webp[: rng.randint(12, 30)])
        add(bad, f"bogus-{i}.bmp", "bmp with a bogus header",
            b"BM" + struct.pack("<IHHI", 1000, 0, 0, 54) + struct.pack("<IiiHH", 40, -5, 0, 7, 99))
        add(bad, b"junk-\xe9\xff-" + str(i).encode() + b".jpg", "non-utf-8 name, not an image",
            rng.randbytes(300))
        add(bad, f"line\nbreak \"{i}\".png", "odd name, not an image", b"not a picture")
        os.mkfifo(root / f"pipe-{i}.jpg")
        bad[f"pipe-{i}.jpg"] = "named pipe"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(root / f"sock-{i}.png"))
        sock.close()
        bad[f"sock-{i}.png"] = "socket"
        os.symlink("/dev/zero", root / f"zero-{i}.jpg")
        bad[f"zero-{i}.jpg"] = "link to /dev/zero"
        os.symlink(f"missing-{i}.jpg", root / f"dangling-{i}.jpg")
        bad[f"dangling-{i}.jpg"] = "dangling link"
        os.symlink(f"loop-{i}.jpg", root / f"loop-{i}.jpg")
        bad[f"loop-{i}.jpg"] = "link loop"
        os.symlink(outside / "elsewhere.jpg", root / f"outside-{i}.jpg")
        bad[f"outside-{i}.jpg"] = "link outside the folder"
        with open(root / f"oversize-{i}.jpg", "wb") as f:
            f.write(jpegs[0][:2048])
            f.truncate(OVERSIZE + i)
        bad[f"oversize-{i}.jpg"] = "oversize (sparse)"
        if os.geteuid() != 0:  # root reads through chmod 000; no such file exists for it
            add(bad, f"unreadable-{i}.jpg", "unreadable (chmod 000)", jpegs[0])
            os.chmod(root / f"unreadable-{i}.jpg", 0)
    os.symlink("loop-a.jpg", root / "loop-b.jpg")
    os.symlink("loop-b.jpg", root / "loop-a.jpg")
    bad["loop-a.jpg"] = bad["loop-b.jpg"] = "link loop"
    (root / ".hidden.jpg").write_bytes(b"hidden files are not looked at")
    return good, bad


# words the reason of each kind must contain (any of them)
REASONS = {
    "truncated jpeg": ("truncated", "corrupt", "unreadable"),
    "truncated png": ("truncated", "corrupt", "unreadable"),
    "zero bytes": ("not an image",), "random bytes": ("not an image",),
    "html named .jpg": ("not an image",), "svg named .png": ("not an image",),
    "zip named .jpg": ("not an image",), "pdf named .jpg": ("not an image",),
    "decompression bomb": ("too large",), "huge dimensions header": ("too large",),
    "png with a damaged chunk": ("corrupt", "unreadable", "truncated"),
    "truncated gif": ("corrupt", "unreadable", "truncated", "not an image"),
    "truncated tiff": ("corrupt", "unreadable", "truncated", "not an image"),
    "truncated webp": ("corrupt", "unreadable", "truncated", "not an image"),
    "bmp with a bogus header": ("corrupt", "unreadable", "not an image"),
    "non-utf-8 name, not an image": ("not an image",),
    "odd name, not an image": ("not an image",),
    "named pipe": ("named pipe",), "socket": ("socket",),
    "link to /dev/zero": ("outside the collection",), "dangling link": ("dangling",),
    "link loop": ("loop",), "link outside the folder": ("outside the collection",),
    "oversize (sparse)": ("too large", "--max-file-mb"),
    "unreadable (chmod 000)": ("permission denied",),
}


def test_bad_files_are_reported_and_good_photos_indexed(tmp_path, photos):
    root = tmp_path / "photos"
    good, bad = make_folder(root, photos, tmp_path / "outside")
    kinds = Counter(bad.values())
    assert len(bad) >= 300 and len(kinds) >= 20, kinds

    first = cli_json("index", root, "-q", timeout=600)
    failed = {f["path"]: f["reason"] for f in first["failed"]}
    assert set(failed) == set(bad), (set(failed) ^ set(bad))
    for path, reason in failed.items():
        assert any(w in reason for w in REASONS[bad[path]]), (bad[path], path, reason)
    assert first["n_images"] == len(good) and first["added"] == len(good)
    state = check_index(root)
    assert state["n"] == len(good)

    # every good photo is findable under its own name, odd bytes and all
    hits = json.loads(cli("search", "a photo", "-k", "1000", "-c", root, "--json").stdout)
    assert {os.path.relpath(h["path"], root) for h in hits} == set(good)
    assert "Traceback" not in cli("search", "a cat", "-k", "50", "-c", root).stderr

    # a second run changes nothing and reports the same files
    again = cli_json("index", root, "-q", timeout=600)
    assert (again["added"], again["updated"], again["removed"], again["embedded"],
            again["duplicates"]) == (0, 0, 0, 0, 0)
    assert {f["path"]: f["reason"] for f in again["failed"]} == failed
    assert again["n_images"] == len(good) and check_index(root) == state

    # the human-readable report: one line per file, names escaped, nothing cut
    text = cli("index", root, "-q").stderr
    assert f"{len(bad)} files not indexed:" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == len(bad) + 1
    assert "junk-\\xe9\\xff-0.jpg: not an image" in text and "line\\nbreak" in text

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    record = {"bad_files": len(bad), "kinds": len(kinds), "per_kind": dict(sorted(kinds.items())),
              "good_files": len(good), "good_kinds": dict(Counter(good.values()))}
    (ARTIFACTS / "bad-files.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    print(f"\n{len(bad)} bad files of {len(kinds)} kinds, all reported; {len(good)} good files indexed")
    for kind, n in sorted(kinds.items()):
        print(f"  {n:3d}  {kind}")
