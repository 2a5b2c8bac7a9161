"""Attention-map visualisation: maps are right, figures render to PNG (Agg), offline HTML."""

import matplotlib

matplotlib.use("Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from ccnet_edu import viz  # noqa: E402
from ccnet_edu.dense import criss_cross_mask, interlaced_masks  # noqa: E402
from ccnet_edu.models import HEADS, SegmentationModel  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_photos_ship_inside_scikit_image():
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    for name in viz.PHOTOS:
        assert (folder / f"{name}.png").is_file(), name  # bundled: no pooch download
    image = viz.load_photo("chelsea", size=(48, 72))
    assert image.shape == (3, 48, 72) and 0 <= image.min() and image.max() <= 1
    with pytest.raises(ValueError, match="bundled"):
        viz.load_photo("hubble")


@pytest.fixture(scope="module")
def photo_maps():
    image = viz.load_photo("coffee", size=(48, 72))
    return image, viz.photo_attention_maps(image, grid=(12, 18), block_size=(4, 6), pool=6)


def test_photo_maps_follow_the_patterns(photo_maps):
    _, maps = photo_maps
    h, w = 12, 18
    cross = criss_cross_mask(h, w)
    long_mask, short_mask = interlaced_masks(h, w, (4, 6))
    flat = viz.flatten_maps(maps)
    for name, matrix in flat.items():
        assert matrix.shape == (h * w, h * w)
        assert torch.allclose(matrix.sum(1), torch.ones(h * w, dtype=matrix.dtype)), name
    assert (maps["CCA"]["loop 1"][~cross] == 0).all()
    assert (maps["CCA"]["loop 1"][cross] > 0).all()
    assert (maps["CCA"]["loops 1+2"] > 0).all()  # two loops reach every pixel
    assert (maps["ISSA"]["long"][~long_mask] == 0).all()
    assert (maps["ISSA"]["short"][~short_mask] == 0).all()
    assert torch.allclose(maps["ISSA"]["combined"], maps["ISSA"]["short"] @ maps["ISSA"]["long"])
    assert (maps["ISSA"]["combined"] > 0).all()


def test_gaussian_query_key_trick_is_exact():
    """softmax(q.k) with the constructed q, k equals softmax(-|f_u - f_p|^2 / tau)."""
    torch.manual_seed(0)
    image = torch.rand(3, 16, 24)
    tau = 0.05
    maps = viz.photo_attention_maps(image, grid=(4, 6), temperature=tau, block_size=(2, 3))
    f = viz.colour_position_features(image, (4, 6)).flatten(2)[0].T  # (N, 5)
    expected = torch.softmax(-(torch.cdist(f, f) ** 2) / tau, dim=1)
    assert torch.allclose(maps["non-local"]["dense"], expected, atol=1e-10)


def test_attention_goes_to_similar_colours():
    image = torch.zeros(3, 24, 24)
    image[0, :, :12] = 1.0  # red left half
    image[2, :, 12:] = 1.0  # blue right half
    maps = viz.photo_attention_maps(image, grid=(6, 6), block_size=(2, 2), pool=2)
    dense = maps["non-local"]["dense"].reshape(36, 6, 6)
    left_query = 2 * 6 + 1
    assert dense[left_query, :, :3].sum() > 0.99
    cross = maps["CCA"]["loop 1"].reshape(36, 6, 6)
    assert cross[left_query, :, :3].sum() > 0.99


def test_squeeze_support():
    s = viz.squeeze_support((6, 6), 2)  # 3x3 windows of 2x2 pixels
    assert torch.allclose(s.sum(1), torch.ones(36, dtype=s.dtype))
    assert (s[0] > 0).sum() == 16  # corner window + 3 neighbours, 4 pixels each
    assert (s[14] > 0).sum() == 36  # centre window sees all 9 windows


def test_squeeze_reach_counts_the_support_of_squeeze_support():
    for grid, pool in (((12, 12), 6), ((20, 28), 4), ((9, 13), (2, 5)), ((5, 5), 8)):
        support = (viz.squeeze_support(grid, pool) > 0).sum(1).reshape(grid)
        assert torch.equal(viz.squeeze_reach(grid, pool), support)
    reach = viz.squeeze_reach((97, 97), 8)  # too large for the (N, N) matrix of a test
    assert int(reach.min()) == 9 * 9 and int(reach.max()) == 24 * 24


def test_model_colours_one_per_model_and_by_row_name():
    colours = list(viz.MODEL_COLOURS.values())
    assert len(set(colours)) == len(colours)  # no two models share a colour
    assert not {"grey", "gray", "black", "tab:gray"} & set(colours)  # kept for reference lines
    from ccnet_edu.train import SHIPPED

    assert set(SHIPPED) <= set(viz.MODEL_COLOURS)
    for row, model in (
        ("non-local", "nonlocal"),
        ("RCCA R=1 (= CCA) [fused]", "rcca1"),
        ("RCCA R=2 [reference]", "rcca2"),
        ("ISSA 8x8", "isa"),
        ("SA (pool 8)", "sa"),
        ("axial (2 passes)", "axial"),
        ("FCN (no context)", "fcn"),
        ("RCCA R=2 + CCL, weight 0.1", "rcca2_ccl0.1"),
        ("RCCA R=2 + CCL, weight 1", "rcca2_ccl"),
    ):
        assert viz.model_colour(row) == viz.MODEL_COLOURS[model], row


def test_plot_scaling_legend_colours_and_guides():
    from matplotlib.colors import to_rgba

    from ccnet_edu.analysis import compare, plots

    points = [
        compare.SweepPoint(name, s, s * s, gflops, 0, None, None)
        for s in (16, 32, 64)
        for name, gflops in (("non-local", 1e-6 * s**4), ("RCCA R=2 [fused]", 1e-4 * s**3))
    ]
    fig, ax = plt.subplots()
    plots.plot_scaling(points, "gflops", ax=ax)
    legend = ax.get_legend()
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 8
    lines = {line.get_label(): line for line in ax.get_lines()}
    nonlocal_line = next(v for k, v in lines.items() if k.startswith("non-local"))
    assert to_rgba(nonlocal_line.get_color()) == to_rgba(viz.model_colour("non-local"))
    # the guides start below every series (the N^2 guide parallel to the slope-2 series and the
    # N^1.5 guide parallel to the slope-1.5 one run apart from them, not on them)
    for guide in ("N^2", "N^1.5"):
        assert lines[guide].get_ydata()[0] < 0.5 * min(p.gflops for p in points)
    plt.close(fig)


def test_plot_scaling_names_the_sizes_of_slopes_fitted_over_different_ranges():
    from ccnet_edu.analysis import compare, plots

    def labels(points):
        fig, ax = plt.subplots()
        plots.plot_scaling(points, "peak_mb", ax=ax, guides=False)
        out = sorted(line.get_label() for line in ax.get_lines())
        plt.close(fig)
        return out

    both = [
        compare.SweepPoint(name, s, s * s, 0.0, 0, peak, None)
        for s in (16, 32, 64)
        for name, peak in (("non-local", 1e-3 * s**4), ("RCCA R=2 [fused]", 1e-2 * s**3))
    ]
    assert all("²" not in label for label in labels(both))
    stopped = both + [
        compare.SweepPoint("non-local", 96, 96 * 96, 0.0, 0, None, None),
        compare.SweepPoint("RCCA R=2 [fused]", 96, 96 * 96, 0.0, 0, 1e-2 * 96**3, None),
    ]
    assert labels(stopped) == [
        "RCCA R=2 [fused] (slope 1.50, 16²–96²)",
        "non-local (slope 2.00, 16²–64²)",
    ]


@pytest.mark.parametrize("head", HEADS)
def test_model_attention_maps(head):
    torch.manual_seed(0)
    model = SegmentationModel(head)
    maps, grid = viz.model_attention_maps(model, torch.rand(3, 96, 96))
    assert grid == (12, 12)
    if head == "fcn":
        assert maps == {}
        return
    for name, matrix in viz.flatten_maps(maps).items():
        assert matrix.shape == (144, 144), name
        assert torch.allclose(matrix.sum(1).float(), torch.ones(144), atol=1e-5), name
    if head == "rcca2":
        assert set(maps["CCA"]) == {"loop 1", "loop 2", "loops 1+2"}
    fig = viz.plot_query_maps(torch.rand(3, 96, 96), maps, grid, [(0, 0), (5, 7)])
    assert viz.figure_to_png(fig).startswith(PNG)


def test_plots_render_to_png(photo_maps):
    image, maps = photo_maps
    figures = [
        viz.plot_query_maps(image, maps, (12, 18), [(3, 4), (10, 17)]),
        viz.plot_criss_cross_mask(5, 7, (2, 3)),
        viz.plot_issa_groups(8, 12, (4, 4)),
        viz.plot_reachability(6, 9, (1, 2), block_size=(3, 3)),
    ]
    from ccnet_edu.data import BeaconShapes

    images, labels = BeaconShapes(2, size=32).batch(range(2))
    figures.append(viz.plot_segmentation(images, labels, {"fcn": labels}))
    for fig in figures:
        assert viz.figure_to_png(fig, dpi=40).startswith(PNG)


def test_reachability_counts():
    fig = viz.plot_reachability(6, 9, (1, 2), loops=2, block_size=(3, 3))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any(f"{6 + 9 - 1}/54" in t and "loop 1" in t for t in titles)
    assert any("54/54" in t and "loop 2" in t for t in titles)
    assert any("6/54" in t and "long step" in t for t in titles)  # (6/3) x (9/3) = 6 members
    assert any("54/54" in t and "long + short" in t for t in titles)


def test_bad_queries_and_grids(photo_maps):
    image, maps = photo_maps
    with pytest.raises(ValueError, match=r"queries\[0\] must lie in the grid"):
        viz.plot_query_maps(image, maps, (12, 18), [(12, 0)])
    with pytest.raises(ValueError, match="query must lie in the grid"):
        viz.query_map_array(maps["CCA"]["loop 1"], (0, 18), (12, 18))
    with pytest.raises(ValueError, match="multiple of block_size"):
        viz.plot_issa_groups(7, 8, (4, 4))
    with pytest.raises(ValueError, match="multiple of block_size"):
        viz.photo_attention_maps(image, grid=(10, 18), block_size=(4, 6))
    with pytest.raises(ValueError, match="empty"):
        viz.plot_query_maps(image, {}, (12, 18), [(0, 0)])


def test_animation_html_is_offline_and_steps_through_queries(photo_maps):
    image, maps = photo_maps
    small = {"CCA": maps["CCA"], "non-local": maps["non-local"]}
    html = viz.attention_animation_html(image, small, (12, 18), [(1, 1), (6, 9), (10, 3)], dpi=30)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "fa fa-" not in html
    assert html.count("data:image/png;base64") == 3  # one embedded frame per query
    with pytest.raises(RuntimeError, match="network"):
        viz.offline_jshtml('<script src="https://cdn.example/x.js"></script>')


def test_explorer_updates_on_slider_and_click(photo_maps):
    image, maps = photo_maps
    box = viz.explorer(image, maps, (12, 18), start=(2, 3))
    row_box, module_box, click_box, output = box.children
    row, col = row_box.children
    module, step = module_box.children
    assert list(module.options) == list(maps)
    module.value = "ISSA"
    assert list(step.options) == ["long", "short", "combined"]
    step.value = "combined"
    row.value = 5
    buttons = click_box.children[1].children
    assert len(buttons) == 12 * 18
    buttons[7 * 18 + 11].click()
    assert (row.value, col.value) == (7, 11)
    assert box.shown == {"module": "ISSA", "step": "combined", "query": (7, 11)}
    module.value = "CCA"
    assert box.shown == {"module": "CCA", "step": "loop 1", "query": (7, 11)}


def test_reachability_has_one_convention():
    # viz.plot_reachability draws its panels with analysis.plots.plot_reachability: black =
    # reachable, numbered rows and columns, a key on one panel
    fig = viz.plot_reachability(6, 9, (1, 2), loops=2, block_size=(3, 3))
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 4
    for ax in drawn:
        assert ax.images[0].get_cmap().name == "Greys"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("column j", "row i")
        assert len(ax.get_xticks()) == 9 and len(ax.get_yticks()) == 6
    legends = [ax.get_legend() for ax in drawn if ax.get_legend() is not None]
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()] == [
        "reachable",
        "not reachable",
        "the pixel",
    ]
    assert all(t.get_fontsize() >= 8 for t in legends[0].get_texts())


def test_issa_groups_padded_grid():
    # 5 x 7 with blocks of 2 x 3: padded to 6 x 9 (bottom row, left and right columns), the
    # numbers drawn are issa.pixel_groups of the padded grid and the 19 padding cells are hatched
    from ccnet_edu import issa

    fig = viz.plot_issa_groups(5, 7, (2, 3), pad=True)
    offset, block = issa.pixel_groups(6, 9, (2, 3))
    for ax, ids in zip(fig.axes[:2], (offset, block), strict=True):
        assert ax.images[0].get_array().shape == (6, 9)
        assert [int(t.get_text()) for t in ax.texts] == ids.flatten().tolist()
        assert sum(p.get_hatch() == "///" for p in ax.patches) == 6 * 9 - 5 * 7
    assert fig.axes[1].get_legend().get_texts()[0].get_text() == "padding"
    plt.close(fig)


def test_phase_breakdown_stacks_each_case_to_one_hundred_percent():
    from ccnet_edu.analysis.plots import PHASE_GROUPS, plot_phase_breakdown

    def row(case, phase, kind, ms):
        return {"isa": "x86-64-v4", "case": case, "phase": phase, "kind": kind, "ms": ms}

    rows = [
        row("97x97", "forward: aggregation A V", "product", 6.0),
        row("97x97", "forward: softmax", "softmax", 1.0),
        row("97x97", "backward: layout copies (gathers)", "other", 2.0),
        row("97x97", "autograd and Python around the calls", "other", 1.0),
        dict(row("97x97", "total (clocks on)", "total", 10.0), fused_ms_clocks_off=8.0),
        row("128x256", "backward: dV = A^T dO", "product", 3.0),
        row("128x256", "forward: threads waiting at the end of a sweep", "other", 1.0),
    ]
    ax = plot_phase_breakdown(rows)
    # patches are drawn bar by bar, group by group: one per group and bar
    first, second = ax.patches[: len(PHASE_GROUPS)], ax.patches[len(PHASE_GROUPS) :]
    assert [p.get_width() for p in first] == pytest.approx([60, 10, 0, 20, 0, 0, 10])
    assert [p.get_width() for p in second] == pytest.approx([75, 0, 0, 0, 25, 0, 0])
    assert len(ax.patches) == 2 * len(PHASE_GROUPS)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # a total row is not a phase; its clocks-off time labels the bar, else the phases' sum does
    assert labels == ["x86-64-v4\n97x97: 8 ms, clocks off", "x86-64-v4\n128x256: 4 ms"]
    with pytest.raises(ValueError, match="no group"):
        plot_phase_breakdown([row("97x97", "something else", "other", 1.0)])
    plt.close("all")
