"""The beacon-shapes dataset: determinism and label correctness."""

import pytest
import torch

from ccnet_edu.data import (
    BEACON_COLOURS,
    NUM_CLASSES,
    BeaconShapes,
    distance_to_beacon,
    make_sample,
)


def test_same_seed_same_samples_in_any_order():
    a = BeaconShapes(8, seed=3)
    b = BeaconShapes(8, seed=3)
    x_fwd = [a[i] for i in range(8)]
    x_rev = [b[i] for i in reversed(range(8))][::-1]
    for (ia, la), (ib, lb) in zip(x_fwd, x_rev, strict=True):
        assert torch.equal(ia, ib) and torch.equal(la, lb)


def test_different_seeds_and_indices_differ():
    img0, _ = BeaconShapes(2, seed=0)[0]
    img1, _ = BeaconShapes(2, seed=1)[0]
    img0b, _ = BeaconShapes(2, seed=0)[1]
    assert not torch.equal(img0, img1)
    assert not torch.equal(img0, img0b)


def test_shapes_and_ranges():
    image, label = BeaconShapes(1, seed=0, size=64)[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.shape == (64, 64) and label.dtype == torch.int64
    assert 0 <= image.min() and image.max() <= 1
    assert set(label.unique().tolist()) <= set(range(NUM_CLASSES))


@pytest.mark.parametrize("index", range(20))
def test_labels_follow_the_beacon(index):
    s = make_sample(5, index)
    image, label, cls = s["image"], s["label"], s["beacon_class"]
    br, bc = s["beacon_corner"]
    k = s["beacon_size"]
    # The beacon's colour (read back from the image) names the class ...
    colour = image[:, br : br + k, bc : bc + k].mean(dim=(1, 2))
    nearest = min(
        range(len(BEACON_COLOURS)),
        key=lambda c: float(((colour - torch.tensor(BEACON_COLOURS[c])) ** 2).sum()),
    )
    assert nearest + 1 == cls
    # ... of every shape pixel and of the beacon; everything else is background.
    beacon = torch.zeros_like(label, dtype=torch.bool)
    beacon[br : br + k, bc : bc + k] = True
    fg = s["shape_mask"] | beacon
    assert fg.any() and s["shape_mask"].any()
    assert (label[fg] == cls).all()
    assert (label[~fg] == 0).all()
    # Shapes never touch the beacon, and they are grey: no channel dominates.
    assert not (s["shape_mask"] & beacon).any()
    shape_colour = image[:, s["shape_mask"]].mean(1)
    assert float(shape_colour.max() - shape_colour.min()) < 0.05


def test_most_shape_pixels_are_out_of_reach_of_a_local_model():
    """The task needs context: most shape pixels lie beyond the 28-px reach of a pixel's logits."""
    far = total = 0
    for i in range(50):
        s = make_sample(0, i)
        d = distance_to_beacon(s)
        far += int((d[s["shape_mask"]] > 28).sum())
        total += int(s["shape_mask"].sum())
    assert far / total > 0.6


def test_distance_to_beacon():
    s = make_sample(0, 0)
    d = distance_to_beacon(s)
    br, bc = s["beacon_corner"]
    assert d[br, bc] == 0
    assert d[br + 2, bc + 2] == 0
    if br + 6 + 3 < d.shape[0]:
        assert d[br + 6 + 3, bc] == 4


def test_bad_arguments():
    with pytest.raises(ValueError, match="length"):
        BeaconShapes(0)
    with pytest.raises(ValueError, match="multiple of 8"):
        BeaconShapes(4, size=60)
    with pytest.raises(IndexError):
        BeaconShapes(4)[4]
