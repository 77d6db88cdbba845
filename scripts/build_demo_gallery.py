#!/usr/bin/env python3
"""Rebuild the demo gallery (src/imagetext/demo_gallery/) from the packages the photos ship in.

    python scripts/build_demo_gallery.py [--work DIR] [--out DIR]

A development tool, not part of the product: `imagetext serve --demo` only copies the files
this script wrote. It downloads the Debian packages below with `apt-get download` (into
--work, reused when already there), unpacks them with `dpkg-deb -x`, reads scikit-image's and
scikit-learn's bundled photos from the installed packages, and for every photo in PHOTOS:

- takes the author, licence and original source from the package's own files (the README
  next to each photo inside GCompris' Qt resource archives, the Debian copyright file,
  Palapeli's .desktop files, scikit-image's docstrings, scikit-learn's README.txt),
- refuses a licence outside ALLOWED_LICENCES,
- downscales it to at most MAX_SIDE pixels on its longest side and saves it as JPEG
  (quality JPEG_QUALITY, no metadata).

It writes credits.tsv (read by imagetext.demo; one row per photo) and CREDITS.md (the same,
for people) next to the photos, and removes photos of an earlier build that PHOTOS no longer
lists. Needs apt-get and dpkg-deb (Debian/Ubuntu), Pillow, scikit-image and scikit-learn.
"""

from __future__ import annotations

import argparse
import io
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "imagetext" / "demo_gallery"
MAX_SIDE = 640
JPEG_QUALITY = 85
# licence as the packages spell it -> the name written to the credits
LICENCE_NAMES = {
    "public domain": "Public domain", "public-domain": "Public domain",
    "cc0": "CC0-1.0", "cc0-1.0": "CC0-1.0",
    "cc-by 2.0": "CC-BY-2.0", "cc-by-2.0": "CC-BY-2.0", "cc-by-3.0": "CC-BY-3.0",
    "cc-by-4.0": "CC-BY-4.0",
}
ALLOWED_LICENCES = {"Public domain", "CC0-1.0", "CC-BY-2.0", "CC-BY-3.0", "CC-BY-4.0"}
LICENCE_URLS = {
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY-2.0": "https://creativecommons.org/licenses/by/2.0/",
    "CC-BY-3.0": "https://creativecommons.org/licenses/by/3.0/",
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
}


# -- Qt resource archives (.rcc) -------------------------------------------------------------
RCC_COMPRESSED, RCC_DIRECTORY, RCC_COMPRESSED_ZSTD = 0x01, 0x02, 0x04


def read_rcc(blob: bytes) -> dict[str, bytes]:
    """Every file in a Qt binary resource archive, by its path ("/a/b.webp").

    Layout (qtbase src/corelib/io/qresource.cpp): a header "qres", version, then the offsets
    of the tree, the data and the names. A tree node is 14 bytes (plus an 8-byte modification
    time from version 2): name offset, flags, then either (child count, first child index)
    for a directory or (territory, language, data offset) for a file. A name is a 2-byte
    length, a 4-byte hash and UTF-16BE characters; a data entry a 4-byte length and the
    bytes, zlib-compressed behind a 4-byte uncompressed length (flag 1) or zstd (flag 4).
    All numbers are big-endian.
    """
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource archive (no 'qres' header)")
    version, tree, data, names = struct.unpack(">4I", blob[4:20])
    node_size = 22 if version >= 2 else 14

    def name_at(offset: int) -> str:
        (length,) = struct.unpack_from(">H", blob, names + offset)
        start = names + offset + 6
        return blob[start:start + 2 * length].decode("utf-16-be")

    def payload(offset: int, flags: int) -> bytes:
        (size,) = struct.unpack_from(">I", blob, data + offset)
        raw = blob[data + offset + 4:data + offset + 4 + size]
        if flags & RCC_COMPRESSED_ZSTD:
            import zstandard  # only archives built with zstd need it

            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        if flags & RCC_COMPRESSED:
            return zlib.decompress(raw[4:])
        return raw

    files: dict[str, bytes] = {}
    stack = [(0, "")]
    while stack:
        node, path = stack.pop()
        base = tree + node * node_size
        name_offset, flags = struct.unpack_from(">IH", blob, base)
        if node:
            path = f"{path}/{name_at(name_offset)}"
        if flags & RCC_DIRECTORY:
            count, first = struct.unpack_from(">II", blob, base + 6)
            stack.extend((child, path) for child in range(first, first + count))
        else:
            (offset,) = struct.unpack_from(">I", blob, base + 10)
            files[path] = payload(offset, flags)
    return files


# -- Debian-style "Key: value" stanzas (copyright files, GCompris READMEs) ---------------------
def stanzas(text: str) -> list[dict[str, str]]:
    """Paragraphs of `Key: value` fields; a line that starts no field continues the last one."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            match = re.match(r"^([A-Za-z][\w-]*):(?:\s+(.*)|$)", line)
            if match:
                key = match.group(1)
                fields[key] = (match.group(2) or "").strip()
            elif key and line.strip() and line.strip() != ".":
                fields[key] = f"{fields[key]}\n{line.strip()}".strip()
        if fields:
            out.append(fields)
    return out


def licence_name(text: str) -> str:
    first = text.splitlines()[0].strip()
    name = LICENCE_NAMES.get(first.lower(), first)
    if name not in ALLOWED_LICENCES:
        raise ValueError(f"licence {first!r} is not one the demo gallery ships")
    return name


# -- the sources --------------------------------------------------------------------------------
@dataclass
class Credit:
    author: str
    licence: str
    source: str  # where the original photo is published
    package: str  # where this script took it from


@dataclass
class Debian:
    """A file inside a Debian package, unpacked under work/PACKAGE/."""

    work: Path
    versions: dict[str, str]

    def unpack(self, package: str) -> Path:
        root = self.work / package
        if package not in self.versions:
            debs = sorted(self.work.glob(f"{package}_*.deb"))
            if not debs:
                subprocess.run(["apt-get", "download", package], cwd=self.work, check=True)
                debs = sorted(self.work.glob(f"{package}_*.deb"))
            deb = debs[-1]
            if not root.is_dir():
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                                     capture_output=True, text=True).stdout.strip()
            self.versions[package] = version
        return root

    def label(self, package: str) -> str:
        return f"Debian {package} {self.versions[package]}"


class Sources:
    def __init__(self, work: Path):
        self.debian = Debian(work, {})
        self._rcc: dict[str, dict[str, bytes]] = {}

    # GCompris: photos inside Qt resource archives, credited by a README in the same archive
    def gcompris(self, archive: str, path: str) -> tuple[bytes, Credit]:
        package = "gcompris-qt-data"
        if archive not in self._rcc:
            rcc = self.debian.unpack(package) / "usr/share/gcompris-qt/rcc" / f"{archive}.rcc"
            self._rcc[archive] = read_rcc(rcc.read_bytes())
        files = self._rcc[archive]
        full = f"/gcompris/src/activities/{archive}/resource/{path}"
        folder = full.rsplit("/", 1)[0]
        while folder.count("/") > 4:  # the README of the folder or of one above it
            readme = files.get(f"{folder}/README")
            if readme:
                relative = full[len(folder) + 1:]
                for stanza in stanzas(readme.decode("utf-8")):
                    if relative in stanza.get("Files", "").split():
                        credit = Credit(stanza["Copyright"].splitlines()[0],
                                        licence_name(stanza["License"]), stanza["Source"],
                                        f"{self.debian.label(package)}, {archive}.rcc:{full}")
                        return files[full], credit
            folder = folder.rsplit("/", 1)[0]
        raise ValueError(f"no README in {archive}.rcc credits {full}")

    # Lomiri wallpapers: credited per file in the Debian copyright file
    def lomiri(self, release: str, name: str) -> tuple[bytes, Credit]:
        package = f"lomiri-wallpapers-{release}"
        root = self.debian.unpack(package)
        copyright_file = root / f"usr/share/doc/{package}/copyright"
        for stanza in stanzas(copyright_file.read_text()):
            if f"{release}/{name}" in stanza.get("Files", "").split():
                author = re.sub(r"^[\d\s,.-]*|[\s,]*\d{4}$", "", stanza["Copyright"]).strip()
                credit = Credit(author, licence_name(stanza["License"]),
                                "https://gitlab.com/ubports/development/core/lomiri-wallpapers",
                                f"{self.debian.label(package)}, /usr/share/backgrounds/{name}")
                return (root / "usr/share/backgrounds" / name).read_bytes(), credit
        raise ValueError(f"{copyright_file} does not credit {name}")

    # Palapeli: each puzzle photo has a .desktop file with author, licence and web page
    def palapeli(self, name: str) -> tuple[bytes, Credit]:
        package = "palapeli-data"
        folder = self.debian.unpack(package) / "usr/share/palapeli/collection"
        fields = dict(line.split("=", 1) for line in (folder / f"{name}.desktop").read_text()
                      .splitlines() if line.startswith("X-KDE-PluginInfo-"))
        credit = Credit(fields["X-KDE-PluginInfo-Author"],
                        licence_name(fields["X-KDE-PluginInfo-License"]),
                        fields["X-KDE-PluginInfo-Website"].replace("http://", "https://"),
                        f"{self.debian.label(package)}, /usr/share/palapeli/collection/{name}.jpg")
        return (folder / f"{name}.jpg").read_bytes(), credit

    # puzzle-jigsaw: samples/* under one copyright stanza, the photo pages listed in a comment
    def puzzle_jigsaw(self, name: str) -> tuple[bytes, Credit]:
        package = "puzzle-jigsaw"
        root = self.debian.unpack(package)
        copyright_file = root / f"usr/share/doc/{package}/copyright"
        stanza = next(s for s in stanzas(copyright_file.read_text())
                      if s.get("Files") == "samples/*")
        number = re.search(r"(\d+)\.\w+$", name).group(1)
        page = next(url for url in re.findall(r"https://\S+", stanza["Comment"])
                    if url.rstrip("/").endswith(f"-{number}"))
        author = re.sub(r"^[\d\s-]*|\s*<[^>]*>", "", stanza["Copyright"]).strip()
        credit = Credit(author, licence_name(stanza["License"]), page,
                        f"{self.debian.label(package)}, /usr/share/{package}/samples/{name}")
        return (root / f"usr/share/{package}/samples" / name).read_bytes(), credit

    # scikit-image: the docstring of skimage.data.<name>() gives source and licence
    def skimage(self, function: str, author: str, source: str, licence: str,
                says: str) -> tuple[bytes, Credit]:
        import skimage
        import skimage.data

        doc = " ".join(getattr(skimage.data, function).__doc__.split())
        if says not in doc:
            raise ValueError(f"skimage.data.{function}'s docstring no longer says {says!r}")
        filename = re.search(r'_load\("data/([^"]+)"\)',
                             Path(skimage.data.__file__).with_name("_fetchers.py").read_text()
                             .split(f"def {function}()", 1)[1]).group(1)
        path = Path(skimage.data.__file__).parent / filename
        credit = Credit(author, licence, source,
                        f"scikit-image {skimage.__version__}, skimage/data/{filename}")
        return path.read_bytes(), credit

    # scikit-learn: sklearn/datasets/images/README.txt credits its two photos
    def sklearn(self, name: str) -> tuple[bytes, Credit]:
        import sklearn

        folder = Path(sklearn.__file__).parent / "datasets" / "images"
        block = (folder / "README.txt").read_text().split(f"Image: {name}", 1)[1]
        block = block.split("Image:", 1)[0]
        links = dict(re.findall(r"^\[(\d)\] (\S+)", block, re.MULTILINE))
        licence = {"https://creativecommons.org/licenses/by/2.0/": "CC-BY-2.0"}[links["1"]]
        author = re.search(r"Some rights reserved by (\S+)", block).group(1)
        credit = Credit(author, licence, links["3"],
                        f"scikit-learn {sklearn.__version__}, sklearn/datasets/images/{name}")
        return (folder / name).read_bytes(), credit


# -- the gallery ----------------------------------------------------------------------------------
# (file written, what it shows, source method, its arguments)
PHOTOS: list[tuple[str, str, str, tuple]] = [
    # people
    ("astronaut.jpg", "the astronaut Eileen Collins in a flight suit, an American flag behind her",
     "skimage", ("astronaut", "NASA", "https://flic.kr/p/r9qvLn", "Public domain",
                 "released into the public domain")),
    ("opera-singers.jpg", "opera singers in costume on a stage", "gcompris",
     ("explore_world_music", "music/italy.webp")),
    ("taiko-drummers.jpg", "taiko drummers at a summer festival at night, under paper lanterns",
     "gcompris", ("explore_world_music", "music/japan.webp")),
    ("mariachi-band.jpg", "a smiling mariachi band playing guitars and trumpets", "gcompris",
     ("explore_world_music", "music/mexico.webp")),
    ("orchestra.jpg", "an orchestra playing on a concert stage", "gcompris",
     ("explore_world_music", "music/orchestra.webp")),
    ("folk-musicians.jpg", "four folk musicians with guitars and a fiddle on a stage", "gcompris",
     ("explore_world_music", "music/ireland.webp")),
    ("didgeridoo-player.jpg", "an Aboriginal Australian man playing a didgeridoo", "gcompris",
     ("explore_world_music", "music/australia.webp")),
    # animals
    ("kitten-with-yarn.jpg", "a black and white kitten playing with a ball of yarn on a red rug",
     "gcompris", ("explore_farm_animals", "animals/cat.webp")),
    ("chelsea-the-cat.jpg", "Chelsea, a tabby cat", "skimage",
     ("chelsea", "Stefan van der Walt", "https://scikit-image.org/docs/stable/api/skimage.data.html",
      "CC0-1.0", "CC0 by the photographer (Stefan van der Walt)")),
    ("german-shepherd.jpg", "a German Shepherd dog standing on grass", "gcompris",
     ("explore_farm_animals", "animals/dog.webp")),
    ("dogs-at-a-window.jpg", "two spaniels looking out of the window of a wooden house",
     "lomiri", ("16.04", "friends_by_Aitzol_Berasategi.jpg")),
    ("horses.jpg", "a herd of horses and a foal on a meadow", "gcompris",
     ("explore_farm_animals", "animals/horse.webp")),
    ("cow.jpg", "a black and white cow in a green field", "gcompris",
     ("explore_farm_animals", "animals/cow.webp")),
    ("sheep.jpg", "a sheep standing on grass", "gcompris",
     ("explore_farm_animals", "animals/sheep.webp")),
    ("pig.jpg", "a pig on grass", "gcompris", ("explore_farm_animals", "animals/pig.webp")),
    ("chickens.jpg", "brown hens on a lawn", "gcompris",
     ("explore_farm_animals", "animals/chicken.webp")),
    ("duck.jpg", "a white duck", "gcompris", ("explore_farm_animals", "animals/duck.webp")),
    ("owl.jpg", "an owl on a branch", "gcompris", ("explore_farm_animals", "animals/owl.webp")),
    ("giraffes.jpg", "two giraffes among trees", "gcompris",
     ("explore_world_animals", "animals/giraffe.webp")),
    ("panda.jpg", "a giant panda sitting on rocks", "gcompris",
     ("explore_world_animals", "animals/panda.webp")),
    ("polar-bear.jpg", "a polar bear walking in the snow", "gcompris",
     ("explore_world_animals", "animals/polar_bear.webp")),
    ("koala.jpg", "a koala in a tree", "gcompris", ("explore_world_animals", "animals/koala.webp")),
    ("kangaroo.jpg", "a kangaroo and her joey", "gcompris",
     ("explore_world_animals", "animals/kangaroo.webp")),
    ("scarlet-macaw.jpg", "a red scarlet macaw parrot", "gcompris",
     ("explore_world_animals", "animals/scarlet_macaw.webp")),
    ("hedgehog.jpg", "a hedgehog in the grass", "gcompris",
     ("explore_world_animals", "animals/hedgehog.webp")),
    ("tiger-in-the-snow.jpg", "a tiger walking in the snow", "puzzle_jigsaw",
     ("pexels-photo-302304.jpeg",)),
    ("kingfisher.jpg", "a kingfisher perched on a branch", "gcompris",
     ("erase", "kingfisher.webp")),
    ("honey-bee.jpg", "a honey bee on a purple flower", "palapeli", ("european-honey-bee",)),
    # food and home
    ("coffee.jpg", "a cup of coffee on a saucer on a wooden table", "skimage",
     ("coffee", "Rachel Michetti", "https://scikit-image.org/docs/stable/api/skimage.data.html",
      "CC0-1.0", "CC0 by the photographer (Rachel Michetti)")),
    ("citrus-fruits.jpg", "sliced oranges, lemons and limes", "palapeli", ("citrus-fruits",)),
    ("fig-in-a-bowl.jpg", "half a fig in a red bowl", "lomiri",
     ("16.04", "Picture_0B_by_freespace.jpg")),
    ("wine-and-a-drum.jpg", "red wine on a wooden table, a drum on a bean bag", "lomiri",
     ("16.04", "Wine_by_Jakkub_Mede.jpg")),
    ("paintbrushes.jpg", "colourful paintbrushes", "lomiri",
     ("16.04", "Picture_1A_by_freespace.jpg")),
    # cities and monuments
    ("bridge-at-night.jpg", "the Roebling suspension bridge in Cincinnati, lit up at night",
     "palapeli", ("cincinnati-bridge",)),
    ("gateway-of-india-at-night.jpg", "the Gateway of India in Mumbai, lit up at night",
     "gcompris", ("explore_monuments", "india/gatewayofIndia.webp")),
    ("eiffel-tower.jpg", "the Eiffel Tower in Paris", "gcompris",
     ("explore_monuments", "france/eiffelTower.webp")),
    ("colosseum.jpg", "the Colosseum in Rome", "gcompris",
     ("explore_monuments", "wonders/colosseum.webp")),
    ("brandenburg-gate.jpg", "the Brandenburg Gate in Berlin at dusk", "gcompris",
     ("explore_monuments", "germany/brandenburgGate.webp")),
    ("statue-of-liberty.jpg", "the Statue of Liberty in New York", "gcompris",
     ("explore_monuments", "usa/statueofLiberty.webp")),
    ("empire-state-building.jpg", "the Empire State Building between skyscrapers in New York",
     "gcompris", ("categorization", "images/monuments/empireState.webp")),
    ("sydney-opera-house.jpg", "the Sydney Opera House on the harbour", "gcompris",
     ("categorization", "images/monuments/operaHouse.webp")),
    ("taj-mahal.jpg", "the Taj Mahal in Agra", "gcompris",
     ("categorization", "images/monuments/tajMahal.webp")),
    ("leaning-tower-of-pisa.jpg", "the Leaning Tower of Pisa", "gcompris",
     ("categorization", "images/monuments/leaningTowerOfPisa.webp")),
    ("neuschwanstein-castle.jpg", "Neuschwanstein Castle above the forest", "gcompris",
     ("explore_monuments", "germany/neuschwansteinCastle.webp")),
    ("golden-temple.jpg", "the Golden Temple in Amritsar and its pool", "gcompris",
     ("explore_monuments", "india/goldenTemple.webp")),
    ("chinese-pagoda.jpg", "a Chinese pagoda among trees by a lake", "sklearn", ("china.jpg",)),
    ("rocket-launch.jpg", "a Falcon 9 rocket lifting off from its launch pad at night", "skimage",
     ("rocket", "SpaceX", "https://www.flickr.com/photos/spacexphotos/16511594820/",
      "Public domain", "released in the public domain")),
    # landscapes
    ("autumn-mountains.jpg", "mountains above an autumn forest and a green meadow", "lomiri",
     ("16.04", "aitzgorri_by_Aitzol_Berasategi.jpg")),
    ("mountain-path.jpg", "a path through a meadow towards rocky snow-capped mountains",
     "lomiri", ("16.04", "picosdeeuropa_by_Aitzol_Berasategi.jpg")),
    ("forest-creek.jpg", "a creek running over rocks in a forest", "lomiri",
     ("16.04", "life_by_Aitzol_Berasategi.jpg")),
    ("sunset.jpg", "the sun setting over hills", "lomiri",
     ("16.04", "sunset_by_Aitzol_Berasategi.jpg")),
    ("dandelions.jpg", "dandelion seed heads in a meadow at sunset", "lomiri",
     ("16.04", "seeding_by_Clements_Engelhardt.jpg")),
    ("great-wall-of-china.jpg", "the Great Wall of China winding over green hills", "gcompris",
     ("explore_monuments", "wonders/greatWallofChina.webp")),
    ("machu-picchu.jpg", "the ruins of Machu Picchu below a mountain peak", "gcompris",
     ("explore_monuments", "wonders/machuPicchu.webp")),
    ("canyon.jpg", "a river winding through a red rock canyon (Canyon de Chelly)", "gcompris",
     ("explore_monuments", "usa/canyondeChelly.webp")),
    ("pyramid-of-giza.jpg", "the Great Pyramid of Giza in the desert", "gcompris",
     ("explore_monuments", "egypt/greatPyramidOfGiza.webp")),
    ("windmills.jpg", "Dutch windmills by a river at Kinderdijk", "gcompris",
     ("categorization", "images/renewable/windmill13.webp")),
]

COLUMNS = ("file", "shows", "author", "licence", "source", "package")


def tsv_field(text: str) -> str:
    if any(c in text for c in "\t\n\r"):
        raise ValueError(f"a tab or line break in a credits field: {text!r}")
    return text


def downscale(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
        return out.getvalue()


def credits_markdown(rows: list[dict[str, str]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["licence"]] = counts.get(row["licence"], 0) + 1
    lines = [
        "# Demo gallery credits",
        "",
        f"{len(rows)} photos, each downscaled to at most {MAX_SIDE} px on its longest side and "
        "re-encoded as JPEG by `scripts/build_demo_gallery.py`, which also wrote this file from "
        "the credits in the packages they ship in. Licences: "
        + ", ".join(f"{name} ({n})" for name, n in sorted(counts.items())) + ".",
        "",
    ]
    lines += [f"- {name}: {url}" for name, url in LICENCE_URLS.items() if name in counts]
    lines += ["", "| File | Shows | Author | Licence | Source | Taken from |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = [row[c].replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build(work: Path, out: Path) -> list[dict[str, str]]:
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    sources = Sources(work)
    rows = []
    names = [name for name, *_ in PHOTOS]
    if len(set(names)) != len(names):
        raise ValueError("two photos with the same file name")
    for name, shows, method, args in PHOTOS:
        data, credit = getattr(sources, method)(*args)
        (out / name).write_bytes(downscale(data))
        rows.append({"file": name, "shows": shows, "author": credit.author,
                     "licence": credit.licence, "source": credit.source,
                     "package": credit.package})
        print(f"{name:32} {credit.licence:14} {credit.author}", file=sys.stderr)
    for stale in out.glob("*.jpg"):
        if stale.name not in names:
            stale.unlink()
    with open(out / "credits.tsv", "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(COLUMNS) + "\n")
        f.writelines("\t".join(tsv_field(row[c]) for c in COLUMNS) + "\n" for row in rows)
    (out / "CREDITS.md").write_text(credits_markdown(rows), encoding="utf-8")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/imagetext-demo-gallery-build"),
                        help="where the Debian packages are downloaded and unpacked")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rows = build(args.work, args.out)
    size = sum((args.out / row["file"]).stat().st_size for row in rows)
    print(f"{len(rows)} photos, {size / 1e6:.2f} MB, in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
