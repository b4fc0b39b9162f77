import numpy as np

from mmssl.seeding import sample_rng
from mmssl.world import World
from modalities.image import SHAPES_SPACE


def test_heldout_combinations_keep_every_value_seen():
    world = World(SHAPES_SPACE, seed=0, num_heldout=6)
    assert len(world.heldout_classes) == 6
    train = [world.classes[i].attributes for i in world.train_classes]
    for i in world.heldout_classes:
        for attr, value in world.classes[i].attributes.items():
            assert any(t[attr] == value for t in train), (attr, value)
    assert set(world.train_classes).isdisjoint(world.heldout_classes)


def test_heldout_depends_on_seed_only():
    assert World(SHAPES_SPACE, 0, 6).heldout_classes == World(SHAPES_SPACE, 0, 6).heldout_classes
    assert World(SHAPES_SPACE, 0, 6).heldout_classes != World(SHAPES_SPACE, 1, 6).heldout_classes


def test_captions_name_attributes_and_codes_say_which():
    world = World(SHAPES_SPACE, 0, 6, single_attribute_prob=0.5)
    rng = sample_rng(0, "test")
    singles = 0
    for _ in range(200):
        concept = world.concept(world.train_classes[0], rng)
        text, codes = world.caption(concept, rng)
        full = world.attribute_codes(concept)
        for code, value, attr in zip(codes, full, SHAPES_SPACE.class_attributes):
            assert code in (-1, value)
            if code == value:
                words = SHAPES_SPACE.synonyms.get(concept[attr], (concept[attr],))
                assert any(w in text for w in words), (text, attr)
        singles += -1 in codes
    assert 60 < singles < 140


def test_sample_rng_is_stable():
    assert np.array_equal(sample_rng(1, "s", 2, 3).integers(1000, size=5), sample_rng(1, "s", 2, 3).integers(1000, size=5))
    assert not np.array_equal(sample_rng(1, "s", 2, 3).integers(1000, size=5), sample_rng(1, "t", 2, 3).integers(1000, size=5))
