"""Album names from the photos' ImageNet labels (index/clusters.py, issue 21), on real photos:
Flickr8k val photos of one kind get an album whose name says it, from the default model's
stored vectors."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from tests.conftest import FLICKR8K, flickr_captions, needs_flickr

pytestmark = needs_flickr
N_EACH = 12


def _kind(captions: list[str], words: set[str], at_least: int) -> bool:
    return sum(bool(words & set(re.findall(r"[a-z]+", c.lower()))) for c in captions) >= at_least


@pytest.fixture(scope="module")
def dogs_and_bikes(tmp_path_factory):
    """N_EACH val photos that all five captions call a dog, and N_EACH that four or more call a
    bike and none a dog (the first in file order), indexed without captions."""
    from imagetext.api import Collection

    captions = flickr_captions("val")
    dogs = [i for i, c in captions.items() if _kind(c, {"dog", "dogs"}, 5)][:N_EACH]
    bikes = [i for i, c in captions.items() if _kind(c, {"bike", "bicycle", "biker", "cyclist"}, 4)
             and not _kind(c, {"dog", "dogs"}, 1)][:N_EACH]
    assert len(dogs) == len(bikes) == N_EACH
    root = tmp_path_factory.mktemp("dogs-and-bikes")
    for name in dogs + bikes:
        shutil.copy(FLICKR8K / "images" / name, root / name)
    col = Collection.open(root)
    col.index()
    yield col, set(dogs), set(bikes)
    col.close()


def test_an_album_of_dogs_is_called_dog_and_one_of_cyclists_mountain_bike(dogs_and_bikes):
    from imagetext.index.clusters import VOCABULARY, head_word

    col, dogs, bikes = dogs_and_bikes
    result = col.cluster(k=2)
    assert result.named_by == "vocabulary"
    names = {}
    for cluster in result.clusters:
        members = {m.path.rsplit("/", 1)[-1] for m in col.cluster_members(cluster.id)[1]}
        kind = "dog" if len(members & dogs) > len(members & bikes) else "bike"
        assert len(members & (dogs if kind == "dog" else bikes)) >= 0.75 * len(members)
        names[kind] = cluster.keywords
        # short, and no two words about one thing
        assert 1 <= len(cluster.keywords) <= 3
        assert len({head_word(w) for w in cluster.keywords}) == len(cluster.keywords)
    assert names["dog"][0] == "dog", names
    # a name the everyday vocabulary does not have: the ImageNet label leads
    assert names["bike"][0] == "mountain bike" and "mountain bike" not in VOCABULARY, names


def test_imagenet_labels_from_stored_vectors_are_the_towers_own(dogs_and_bikes, encoder):
    """The classifier read from the stored (normalised) visual vectors gives the top class the
    image tower itself gives for the photos."""
    from imagetext.index.clusters import PLAIN_NAMES, imagenet_label_names, imagenet_probabilities

    col, dogs, _ = dogs_and_bikes
    ids, visual = col.vectors("visual")
    probs = imagenet_probabilities(visual)
    assert probs.shape == (len(ids), 1003) and np.allclose(probs[:, :1000].sum(1), 1, atol=1e-4)
    paths = [col.path_of(int(i)) for i in ids]
    pixels = np.stack([encoder.preprocess.load(p) for p in paths])  # ConSE's tower, in PyTorch
    tops = [t[0][0] for t in encoder.imagenet_top(pixels, k=1)]
    ours = [imagenet_label_names()[j] for j in probs[:, :1000].argmax(1)]
    same = sum(PLAIN_NAMES.get(t, t) == o for t, o in zip(tops, ours))
    assert same >= len(ids) - 1, list(zip(tops, ours))
    # a kind is the sum of its classes' probabilities: most of a dog photo's, little of a bike's
    dog = probs[:, imagenet_label_names().index("dog")]
    is_dog = np.array([p.name in dogs for p in paths])
    assert (dog[is_dog] >= 0.5).sum() >= 10 and (dog[~is_dog] < 0.1).sum() >= 10, dog


def test_album_names_hold_one_word_per_thing():
    from imagetext.index.clusters import album_name

    assert album_name(["dog", "dogs", "grass", "suspension bridge", "bridge", "sky"]) == \
        ["dog", "grass", "suspension bridge"]
    assert album_name(["children", "child", "men", "man", "beach"]) == ["children", "men", "beach"]
    assert album_name(["skis", "ski", "skiing", "snow"], 2) == ["skis", "snow"]
    assert album_name(["swimming", "swim", "pool", "building"]) == ["swimming", "pool", "building"]
