import numpy as np
import pytest

from mmssl.common.seeding import sample_rng
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
        singles += -1 in codes[:2]  # a class attribute left unnamed: a single-attribute caption
    assert 60 < singles < 140


def test_shared_attribute_prob_sets_the_share_of_captions_that_name_the_count():
    def share(prob: float | None) -> float:
        world = World(SHAPES_SPACE, 0, 6, single_attribute_prob=0.6, shared_attribute_prob=prob)
        rng = sample_rng(0, "test")
        captions = [world.caption(world.concept(world.train_classes[i % 30], rng), rng) for i in range(1000)]
        for text, codes in captions:  # the count's code is set exactly where its words are in the caption
            assert (codes[-1] != -1) == ("dot" in text), text
        return sum(codes[-1] != -1 for _, codes in captions) / len(captions)

    assert 0.2 < share(None) < 0.35  # as the templates fall
    assert share(0.0) == 0.0 and share(1.0) == 1.0
    assert 0.55 < share(0.6) < 0.65
    with pytest.raises(ValueError, match=r"world.shared_attribute_prob must be in \[0, 1\] or null, got 1.5"):
        World(SHAPES_SPACE, 0, 6, shared_attribute_prob=1.5)


def test_sample_rng_is_stable():
    assert np.array_equal(sample_rng(1, "s", 2, 3).integers(1000, size=5), sample_rng(1, "s", 2, 3).integers(1000, size=5))
    assert not np.array_equal(sample_rng(1, "s", 2, 3).integers(1000, size=5), sample_rng(1, "t", 2, 3).integers(1000, size=5))


def test_count_crosses_modalities_and_each_renders_it():
    import networkx as nx

    from modalities.audio import TONES_SPACE, render_tone
    from modalities.base import COUNT
    from modalities.graph import GRAPH_SPACE, SIZES, render_graph
    from modalities.image import render_shape

    assert all(space.shared_attributes == COUNT for space in (SHAPES_SPACE, TONES_SPACE, GRAPH_SPACE))
    for n, count in enumerate(COUNT["count"], 1):
        rng = sample_rng(0, "count", n)
        image = np.asarray(render_shape({"colour": "blue", "shape": "cross", "size": "small", "position": "top", "count": count}, rng, 32))
        dots = image[24:, :, :].min(2) > 150  # light grey dots along the bottom edge, clear of the shape at the top
        grid = nx.grid_2d_graph(*dots.shape)  # 4-connected pixels; the background's removed
        grid.remove_nodes_from(zip(*np.nonzero(~dots)))
        assert nx.number_connected_components(grid) == n, count
        tone = render_tone({"contour": "steady", "timbre": "sine", "register": "middle", "count": count}, rng, 8000, 1.0)
        loud = np.convolve(np.abs(tone), np.ones(40) / 40, mode="same") > 0.05
        assert np.sum(np.diff(loud.astype(int)) == 1) + loud[0] == n, count
        graph = render_graph({"family": "path", "size": "small", "count": count}, rng)
        low, high = SIZES["small"]
        assert low <= graph.num_nodes - 2 * n <= high


def test_captions_that_name_the_count_match_only_items_of_that_count():
    world = World(SHAPES_SPACE, 0, 6, single_attribute_prob=0.5)
    rng = sample_rng(0, "count captions")
    named = 0
    for _ in range(300):
        concept = world.concept(world.train_classes[0], rng)
        text, codes = world.caption(concept, rng)
        assert len(codes) == 3 and world.match_codes(concept)[:2] == world.attribute_codes(concept)
        if codes[2] != -1:
            named += 1
            assert codes[2] == ("one", "two", "three", "four").index(concept["count"])
            assert concept["count"] in text
    assert 0.15 < named / 300 < 0.45


def test_four_notes_fit_a_short_clip():
    from modalities.audio import render_tone

    for i in range(20):
        tone = render_tone({"contour": "rising", "timbre": "square", "register": "low", "count": "four"}, sample_rng(i, "short"), 8000, 0.5)
        loud = np.convolve(np.abs(tone), np.ones(40) / 40, mode="same") > 0.05
        assert tone.shape == (4000,) and np.sum(np.diff(loud.astype(int)) == 1) + loud[0] == 4
