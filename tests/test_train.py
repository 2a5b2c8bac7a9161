"""Models, training, evaluation, checkpoints and distributed training."""

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ccnet_edu.checkpoint import payload_digest
from ccnet_edu.models import (
    CHECKPOINT_DIR,
    HEADS,
    SegmentationModel,
    add_digest,
    load_checkpoint,
    load_pretrained,
    pretrained_names,
    save_checkpoint,
    state_dict_digest,
)
from ccnet_edu.train import (
    FAR,
    SHIPPED,
    AllReduceBatchNorm2d,
    TrainConfig,
    build_parser,
    checkpoint_name,
    confusion_matrix,
    evaluate,
    loss_curve,
    metrics_from_confusion,
    train,
)
from ccnet_edu.train import main as train_main
from ccnet_edu.train_cli import _check_arguments


@pytest.mark.parametrize("head", HEADS)
def test_head_output_shapes(head):
    torch.manual_seed(0)
    model = SegmentationModel(head, embedding_channels=16).eval()
    x = torch.rand(2, 3, 40, 56)  # non-square, stride-8 grid 5 x 7
    out = model(x, return_all=True)
    assert model(x).shape == (2, 4, 40, 56)
    assert out["logits"].shape == (2, 4, 40, 56)
    assert out["logits_small"].shape == (2, 4, 5, 7)
    assert out["features"].shape == (2, 64, 5, 7)
    assert out["embedding"].shape == (2, 16, 5, 7)
    assert (out["attention"] is None) == (head == "fcn")


@pytest.mark.parametrize("head", HEADS)
def test_heads_run_on_meta(head):
    model = SegmentationModel(head).to("meta").eval()
    assert model(torch.empty(1, 3, 32, 32, device="meta")).shape == (1, 4, 32, 32)


def test_context_reaches_far_pixels_only_with_context():
    """The FCN head's output at one corner ignores the opposite corner; RCCA (R=2) does not."""
    for head, expect_far in (("fcn", False), ("rcca2", True), ("nonlocal", True), ("axial", True)):
        torch.manual_seed(0)
        model = SegmentationModel(head).eval()
        for p in model.parameters():  # gamma = 0 at init would hide the attention path
            if p.dim() == 0:
                p.data.fill_(1.0)
        x = torch.rand(1, 3, 96, 96, requires_grad=True)
        model(x)[0, :, 0, 0].sum().backward()
        far = x.grad[0, :, 60:, 60:].abs().sum()
        assert (far > 0) == expect_far, head


def test_bad_head_and_input():
    with pytest.raises(ValueError, match="head must be one of"):
        SegmentationModel("deeplab")
    with pytest.raises(ValueError, match="divisible by 8"):
        SegmentationModel("fcn")(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="channels"):
        SegmentationModel("fcn")(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("head,ccl", [("fcn", False), ("rcca2", False), ("rcca2", True)])
def test_a_few_steps_reduce_the_loss(head, ccl):
    log = []
    cfg = TrainConfig(head=head, ccl=ccl, steps=12, batch_size=8, size=48, lr=5e-3)
    train(cfg, progress=False, log=log)
    losses = [entry["loss"] for entry in log]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert ("ccl" in log[0]) == ccl


def test_training_is_deterministic():
    cfg = TrainConfig(head="rcca1", steps=3, batch_size=4, size=32)
    a = train(cfg, progress=False)
    b = train(cfg, progress=False)
    assert state_dict_digest(a) == state_dict_digest(b)


def test_metrics_by_hand():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    confusion = confusion_matrix(pred, target, 4)
    assert confusion.tolist()[:2] == [[1, 1, 0, 0], [0, 2, 0, 0]]
    m = metrics_from_confusion(confusion)
    # IoU(0) = 1/2, IoU(1) = 2/3; classes 2, 3 absent everywhere -> not averaged.
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["pixel_acc"] == pytest.approx(3 / 4)


def test_evaluate_perfect_and_constant_models():
    from ccnet_edu.data import make_sample

    class Background(torch.nn.Module):  # always predicts class 0
        def forward(self, x):
            return torch.zeros(x.shape[0], 4, *x.shape[-2:]).index_fill_(1, torch.tensor([0]), 1)

    class Oracle(torch.nn.Module):  # replays the labels of the samples evaluate() draws
        def __init__(self):
            super().__init__()
            self.next = 0

        def forward(self, x):
            labels = [make_sample(10_000, self.next + i, size=48)["label"] for i in range(len(x))]
            self.next += len(x)
            return torch.nn.functional.one_hot(torch.stack(labels), 4).permute(0, 3, 1, 2).float()

    labels = torch.stack([make_sample(10_000, i, size=48)["label"] for i in range(4)])
    m = evaluate(Background(), length=4, size=48, batch_size=2)
    assert m["pixel_acc"] == pytest.approx(float((labels == 0).double().mean()))
    assert m["iou"][0] == pytest.approx(m["pixel_acc"])  # background predicted everywhere
    assert m["iou"][1:] == [0.0, 0.0, 0.0] and m["far_acc"] == 0.0
    perfect = evaluate(Oracle(), length=4, size=48, batch_size=2)
    assert perfect["miou"] == 1.0 and perfect["pixel_acc"] == 1.0 and perfect["far_acc"] == 1.0


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SegmentationModel("isa", embedding_channels=16).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, {"seed": 7, "command": "x"})
    loaded = load_checkpoint(path)
    assert loaded.meta == {"seed": 7, "command": "x"}
    assert loaded.config == model.config
    assert state_dict_digest(loaded) == state_dict_digest(model)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ValueError, match=r"name must be one of the shipped.*no_such_head"):
        load_pretrained("no_such_head")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(bad)
    good = save_checkpoint(tmp_path / "good.pt", SegmentationModel("fcn"), {})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a ccnet_edu checkpoint"):
        load_checkpoint(other)


def test_checkpoint_stores_the_digest_and_a_flipped_byte_is_caught(tmp_path):
    torch.manual_seed(0)
    model = SegmentationModel("fcn").eval()
    marker = 1234.5678  # a value whose float32 bytes occur once in the file
    with torch.no_grad():
        model.head.classifier.bias[2] = marker
    path = save_checkpoint(tmp_path / "m.pt", model, {})
    payload = torch.load(path, weights_only=True)
    assert payload["state_dict_digest"] == state_dict_digest(model)
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<f", marker))
    assert at > 0 and data.find(struct.pack("<f", marker), at + 1) == -1
    data[at] ^= 0x01  # one bit of the tensor data
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    # torch itself loads the damaged file without complaint ...
    torch.load(damaged, weights_only=True)
    # ... the digest does not.
    with pytest.raises(ValueError, match=r"damaged.pt is damaged: its weights do not match"):
        load_checkpoint(damaged)


def _payload(tmp_path, name, **changes):
    """A checkpoint file with ``changes`` applied to a valid payload (digests recomputed)."""
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "valid.pt", SegmentationModel("fcn"), {"seed": 0})
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    if "digest" in payload:
        payload["digest"] = payload_digest(payload)
    out = tmp_path / name
    torch.save(payload, out)
    return out


def test_checkpoint_without_digest_says_how_to_add_one(tmp_path):
    old = _payload(
        tmp_path, "old.pt", format="ccnet_edu.checkpoint/1", state_dict_digest=None, digest=None
    )
    with pytest.raises(ValueError, match=r"old.pt has the format .*weights only.*redigest"):
        load_checkpoint(old)
    before = torch.load(old, weights_only=True)
    add_digest(old)
    after = torch.load(old, weights_only=True)
    assert after["meta"] == before["meta"] and after["config"] == before["config"]
    for key, tensor in before["state_dict"].items():
        assert torch.equal(after["state_dict"][key], tensor)
    assert load_checkpoint(old).meta == {"seed": 0}


@pytest.mark.parametrize(
    "config,message",
    [
        ({"head": "fcn", "width": 1e6}, r"width must be an int, got float"),
        ({"head": "fcn", "width": 0}, r"width must be >= 1"),
        ({"head": "fcn", "width": True}, r"width must be an int, got bool"),
        ({"head": "fcn", "dropout": 2.0}, r"dropout must be <= 1"),
        ({"head": "fcn", "dropout": float("nan")}, r"dropout must be finite"),
        ({"head": "deeplab"}, r"head must be one of"),
        ({"head": "fcn", "depth": 3}, r"unknown keys \['depth'\]"),
        ("fcn", r"config must be a dict"),
        # valid values, but not the model whose weights the file holds
        ({"head": "fcn", "width": 10**6}, r"does not match its config"),
        ({"head": "rcca2"}, r"does not match its config"),
    ],
)
def test_checkpoint_config_is_validated_before_the_model_is_built(tmp_path, config, message):
    path = _payload(tmp_path, "bad_config.pt", config=config)
    with pytest.raises(ValueError, match=message) as info:
        load_checkpoint(path)
    assert "bad_config.pt" in str(info.value)


def test_load_pretrained_reads_only_shipped_names():
    for name in ("../checkpoints/rcca2", "/etc/passwd", "rcca2.pt", "", "RCCA2"):
        with pytest.raises(ValueError, match="name must be one of the shipped checkpoints"):
            load_pretrained(name)
    with pytest.raises(TypeError, match="name must be a str"):
        load_pretrained(Path("rcca2"))


def test_every_shipped_checkpoint_has_a_verified_digest():
    names = pretrained_names()
    assert {"fcn", "rcca2", "rcca2_ccl"} <= set(names)
    for name in names:
        payload = torch.load(CHECKPOINT_DIR / f"{name}.pt", weights_only=True)
        model = load_pretrained(name)  # verifies the digest
        assert state_dict_digest(model) == payload["state_dict_digest"], name
        assert not model.training


def test_all_reduce_batchnorm_is_batchnorm_outside_a_process_group():
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(3)
    ours = AllReduceBatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(ours(x), ref(x))
    assert torch.allclose(ours.running_var, ref.running_var)


def _torchrun(tmp_path: Path, nproc: int, extra: list[str]) -> None:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
        PYTHONWARNINGS="ignore",
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "ccnet_edu.train",
        "--ddp",
        "--head",
        "rcca2",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--size",
        "32",
        "--val-size",
        "0",
        "--dropout",
        "0",
        "--threads",
        "1",
        "--quiet",
        *extra,
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell")
def test_ddp_two_cpu_processes_end_identical(tmp_path):
    """torchrun, 2 processes, gloo, synchronised BN: both ranks end with the same weights,
    and those equal a single process trained on the same global batches."""
    _torchrun(
        tmp_path, 2, ["--digest-dir", str(tmp_path / "ddp"), "--save", str(tmp_path / "ddp.pt")]
    )
    digests = [(tmp_path / "ddp" / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]

    torch.manual_seed(0)
    init = SegmentationModel("rcca2", dropout=0.0)
    assert digests[0].strip() != state_dict_digest(init)  # the weights did move

    single = train(
        TrainConfig(head="rcca2", steps=3, batch_size=4, size=32, dropout=0.0), progress=False
    )
    ddp = load_checkpoint(tmp_path / "ddp.pt")
    for (name, a), (_, b) in zip(
        single.state_dict().items(), ddp.state_dict().items(), strict=True
    ):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), name


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX shell")
def test_ddp_without_sync_bn_fails_the_tolerance(tmp_path):
    """The negative control of the test above: with per-process batch-norm statistics
    (--no-sync-bn) the weights leave the tolerance that the synchronised run stays within."""
    _torchrun(tmp_path, 2, ["--no-sync-bn", "--save", str(tmp_path / "local.pt")])
    single = train(
        TrainConfig(head="rcca2", steps=3, batch_size=4, size=32, dropout=0.0), progress=False
    )
    local = load_checkpoint(tmp_path / "local.pt")
    outside = [
        name
        for (name, a), (_, b) in zip(
            single.state_dict().items(), local.state_dict().items(), strict=True
        )
        if a.is_floating_point() and not torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    ]
    assert len(outside) > 1, outside


def test_checkpoint_meta_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match="meta must hold only plain"):
        save_checkpoint(tmp_path / "m.pt", SegmentationModel("fcn"), {"v": torch.__version__})
    assert not (tmp_path / "m.pt").exists()


# --------------------------------------------------------------------------- the command line


def _usage_error(capsys, argv):
    """Run the CLI in-process; return its one-line error after checking exit code 2."""
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m ccnet_edu.train: error: "), err
    return err


@pytest.mark.parametrize(
    "argv,names",
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "1.5"], "--steps"),
        (["--steps", "ten"], "--steps"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--dropout", "1.5"], "--dropout"),
        (["--dropout", "-0.1"], "--dropout"),
        (["--size", "30"], "--size"),
        (["--size", "16"], "--size"),
        (["--width", "0"], "--width"),
        (["--mid-channels", "0"], "--mid-channels"),
        (["--seed", "-1"], "--seed"),
        (["--ccl-weight", "0"], "--ccl-weight"),
        (["--val-size", "-1"], "--val-size"),
        (["--val-seed", "-1"], "--val-seed"),
        (["--threads", "-2"], "--threads"),
        (["--head", "deeplab"], "--head"),
        (["--all", "--names", "fcn,deeplab"], "--names"),
        (["--all", "--seeds"], "--seeds"),
        (["--all", "--seeds", "0", "-1"], "--seeds"),
        (["--all", "--seeds", "1", "1"], "--seeds"),
        (["--device", "gpu"], "--device"),
        (["--all", "--head", "fcn"], "--head"),
        (["--all", "--ccl"], "--ccl"),
        (["--all", "--save", "x.pt"], "--save"),
        (["--seeds", "0", "1"], "--seeds"),
        (["--names", "fcn"], "--names"),
        (["--out-dir", "somewhere"], "--out-dir"),
        (["--no-sync-bn"], "--no-sync-bn"),
        (["--ddp"], "--ddp"),
        (["--all", "--out-dir", str(CHECKPOINT_DIR)], "--overwrite-shipped"),
        (["--save", str(CHECKPOINT_DIR / "rcca2.pt")], "--overwrite-shipped"),
        (["--all", "--overwrite-shipped", "--out-dir", "elsewhere"], "--overwrite-shipped"),
    ],
)
def test_cli_rejects_bad_options_before_any_work(capsys, argv, names):
    assert names in _usage_error(capsys, argv)


def test_cli_checks_output_paths_before_training(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr("ccnet_edu.train.train", None)  # any training would fail loudly
    assert "--save" in _usage_error(capsys, ["--save", str(blocker / "m.pt")])
    assert "--save" in _usage_error(capsys, ["--save", str(tmp_path)])  # a directory
    assert "--out-dir" in _usage_error(capsys, ["--all", "--out-dir", str(blocker)])
    assert "--out-dir" in _usage_error(capsys, ["--all", "--out-dir", str(blocker / "sub")])
    assert "--digest-dir" in _usage_error(capsys, ["--digest-dir", str(blocker)])


def test_cli_ddp_batch_must_split_over_processes(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert "--batch-size 16 must be a multiple" in _usage_error(capsys, ["--ddp"])


def test_cli_usage_error_is_exit_code_2_and_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "ccnet_edu.train", "--steps", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "python -m ccnet_edu.train: error: argument --steps: must be >= 1, got 0 (see --help)"
    ]


def test_cli_all_writes_outside_the_package_unless_asked(tmp_path, monkeypatch):
    parser = build_parser()
    monkeypatch.chdir(tmp_path)
    paths = _check_arguments(parser, parser.parse_args(["--all", "--names", "fcn"]))
    assert paths == [Path("checkpoints") / "fcn.pt"]
    paths = _check_arguments(
        parser,
        parser.parse_args(
            [
                "--all",
                "--names",
                "rcca2,rcca2_ccl",
                "--overwrite-shipped",
                "--seeds",
                "0",
                "2",
                "--ccl-weight",
                "0.1",
            ]
        ),
    )
    assert paths == [
        CHECKPOINT_DIR / n
        for n in ("rcca2.pt", "rcca2_ccl0.1.pt", "rcca2_seed2.pt", "rcca2_ccl0.1_seed2.pt")
    ]


def test_cli_all_several_seeds_names_and_meta(tmp_path, monkeypatch):
    shipped = {p.name: p.stat().st_mtime_ns for p in CHECKPOINT_DIR.glob("*.pt")}
    monkeypatch.chdir(tmp_path)
    argv = [
        "--all",
        "--names",
        "fcn,rcca2_ccl",
        "--seeds",
        "0",
        "1",
        "--ccl-weight",
        "0.1",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--size",
        "24",
        "--val-size",
        "0",
        "--threads",
        "1",
        "--quiet",
    ]
    train_main(argv)
    written = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert written == ["fcn.pt", "fcn_seed1.pt", "rcca2_ccl0.1.pt", "rcca2_ccl0.1_seed1.pt"]
    model = load_checkpoint(tmp_path / "checkpoints" / "rcca2_ccl0.1_seed1.pt")
    meta = model.meta
    assert meta["command"] == "python -m ccnet_edu.train " + " ".join(argv)
    assert meta["seed"] == 1 and meta["config"]["ccl_weight"] == 0.1 and meta["config"]["ccl"]
    assert meta["train_seconds"] > 0
    curve = meta["loss_curve"]
    assert curve["every"] == 20 and curve["step"] == [3]
    assert len(curve["loss"]) == len(curve["ce"]) == len(curve["ccl"]) == 1
    assert {p.name: p.stat().st_mtime_ns for p in CHECKPOINT_DIR.glob("*.pt")} == shipped


def test_loss_curve_averages_windows():
    log = [{"loss": float(k), "ce": 2.0 * k} for k in range(45)]
    curve = loss_curve(log, every=20)
    assert curve["step"] == [20, 40, 45]
    assert curve["loss"] == [9.5, 29.5, 42.0]
    assert curve["ce"] == [19.0, 59.0, 84.0]
    assert "ccl" not in curve
    assert loss_curve([]) == {"every": 20, "step": []}


def test_checkpoint_name():
    assert checkpoint_name("rcca2") == "rcca2"
    assert checkpoint_name("rcca2", True) == "rcca2_ccl"
    assert checkpoint_name("rcca2", True, 0.1, 3) == "rcca2_ccl0.1_seed3"
    assert checkpoint_name("fcn", False, 0.1, 1) == "fcn_seed1"
    assert all(checkpoint_name(h, c) == n for n, (h, c) in SHIPPED.items())


def test_train_config_validates_every_key():
    for key, value, error in [
        ("steps", 0, ValueError),
        ("steps", 2.0, TypeError),
        ("steps", True, TypeError),
        ("size", 36, ValueError),
        ("size", 16, ValueError),
        ("lr", 0.0, ValueError),
        ("lr", float("nan"), ValueError),
        ("dropout", 1.5, ValueError),
        ("ccl", 1, TypeError),
        ("ccl_weight", -1.0, ValueError),
        ("seed", -1, ValueError),
        ("head", "deeplab", ValueError),
        ("val_size", -1, ValueError),
    ]:
        with pytest.raises(error, match=key):
            TrainConfig(**{key: value})
    with pytest.raises(TypeError, match="unexpected keyword argument .epochs."):
        TrainConfig(epochs=3)


def test_ccl_labels_are_pixel_8i_8j_the_receptive_field_centre():
    """segmentation_loss hands the CCL the label of pixel (8i, 8j) of feature cell (i, j).

    ``mode="nearest"`` takes the top-left pixel of each 8x8 cell (not its centre,
    which ``nearest-exact`` would take); that pixel is the centre of the cell's
    receptive field in the book's backbone.
    """
    from ccnet_edu.train import segmentation_loss

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, embedding, labels):
            seen.append(labels)
            return embedding.sum() * 0

    offset = torch.arange(96) % 8
    labels = offset[:, None] * 8 + offset[None, :]  # the pixel's (row, col) inside its 8x8 cell
    out = {"logits": torch.zeros(1, 64, 96, 96), "embedding": torch.zeros(1, 2, 12, 12)}
    segmentation_loss(out, labels[None], Recorder(), 1.0)
    assert torch.equal(seen[0][0], torch.zeros(12, 12, dtype=torch.long))  # offset (0, 0)

    torch.manual_seed(0)
    model = SegmentationModel("fcn").eval()
    x = torch.rand(1, 3, 96, 96, requires_grad=True)
    model(x, return_all=True)["features"][0, :, 6, 6].sum().backward()
    support = x.grad[0].abs().sum(0) > 0
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    assert (int(rows.min()) + int(rows.max())) / 2 == 8 * 6
    assert (int(cols.min()) + int(cols.max())) / 2 == 8 * 6


def test_reach_of_a_pixels_logits_is_28_pixels():
    """What train.FAR's comment says: one cell sees 17 px either side, a pixel's logits 28 px."""
    torch.manual_seed(0)
    model = SegmentationModel("fcn").double().eval()
    reach = 0
    for r in range(40, 56):  # every position inside two cells
        x = torch.rand(1, 3, 96, 96, dtype=torch.float64, requires_grad=True)
        model(x)[0, :, r, r].sum().backward()
        rows = (x.grad[0].abs().sum(0) > 0).any(1).nonzero().flatten()
        reach = max(reach, r - int(rows.min()), int(rows.max()) - r)
    assert reach == 28 > FAR
