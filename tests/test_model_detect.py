"""Bring your own AlexNet: a state dict's architecture and class count read from its tensors, the
tutorial variant users copy, and one line for whatever does not fit."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_one_line, cli
from torch import nn

from alexnet_deploy.models import build_model


class TutorialAlexNet(nn.Module):
    """Written as the popular PyTorch tutorials print it (not imported from the package)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), 256 * 6 * 6)
        return self.classifier(x)


@pytest.fixture(scope="module")
def tutorial_pth(tmp_path_factory):
    torch.manual_seed(3)
    model = TutorialAlexNet(num_classes=5).eval()
    path = tmp_path_factory.mktemp("tutorial") / "alexnet_tutorial.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_tutorial_variant_has_the_tutorial_widths_and_fixed_input():
    convs = [m for m in build_model("alexnet-384", 10).features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 384, 256]
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in build_model("alexnet-384").modules())


@pytest.mark.slow
def test_tutorial_state_dict_exports_with_no_arch_and_computes_what_the_users_module_does(tutorial_pth, demo_data,
                                                                                         tmp_path):
    model, pth = tutorial_pth
    out = tmp_path / "E"
    names = tmp_path / "classes.txt"
    names.write_text("zebra\nant\n\nkoala bear\nyak\r\nbee\n", encoding="utf-8")  # a blank line, CRLF
    r = cli("export", pth, "--out", out, "--formats", "torchscript", "--max-batch", 3, "--classes", names)
    assert r.code == 0, r.err[-2000:]
    card = json.loads((out / "manifest.json").read_text())["card"]
    assert (card["arch"], card["num_classes"], card["input"]["shape"]) == ("alexnet-384", 5, [3, 224, 224])
    assert card["classes"] == ["zebra", "ant", "koala bear", "yak", "bee"]  # the file's order
    scripted = torch.jit.load(str(out / "alexnet.torchscript.pt"))
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-4, rtol=1e-3)

    # and on through the other commands, as the README shows
    r = cli("validate", out, "--images", 0)
    assert r.code == 0, r.err[-2000:]
    r = cli("benchmark", out, "--batch-sizes", "1", "--duration-s", 0.2, "--warmup-s", 0.05,
            "--backends", "torchscript")
    assert r.code == 0, r.err[-2000:]
    assert json.loads((out / "benchmark.json").read_text())["roofline"]["model_input"] == 224
    image = next((demo_data / "val" / "circle").iterdir())  # 72 px: resized up to the card's 224 crop
    r = cli("predict", out / "alexnet.torchscript.pt", image, "--top", 1)
    assert r.code == 0, r.err[-2000:]
    top1 = r.out.splitlines()[1]
    assert any(name in top1 for name in card["classes"]), r.out  # class names may hold spaces ("koala bear")


def test_a_wrong_arch_names_the_first_tensor_that_differs_and_both_shapes(tutorial_pth, tmp_path):
    _, pth = tutorial_pth
    r = cli("export", pth, "--out", tmp_path / "E", "--formats", "torchscript", "--arch", "alexnet")
    assert r.code == 2
    assert_one_line(r.err, "features.8.weight", "[384, 384, 3, 3]", "[256, 384, 3, 3]", "--arch")
    assert not (tmp_path / "E").exists()


def test_a_state_dict_of_no_registered_architecture_lists_the_candidates(tmp_path):
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 62 * 62, 4)).state_dict(),
               tmp_path / "mine.pth")
    r = cli("export", tmp_path / "mine.pth", "--out", tmp_path / "E", "--formats", "torchscript")
    assert r.code == 2
    assert_one_line(r.err, "mine.pth", "tried alexnet, alexnet-2012, alexnet-384 and torchvision's classifiers",
                    "--arch")


def test_a_fixed_size_architecture_refuses_another_image_size(demo_data, tmp_path):
    r = cli("train", "--data", demo_data, "--out", tmp_path / "run", "--arch", "alexnet-384",
            "--image-size", 64, "--epochs", 1)
    assert r.code == 2
    assert_one_line(r.err, "alexnet-384", "224", "--image-size 224")
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_classes_from_an_image_folder_are_its_sorted_class_folders(demo_data):
    from alexnet_deploy.data import check_class_folders, read_class_names

    expected = check_class_folders(demo_data / "train")
    assert read_class_names(demo_data) == expected == sorted(expected)
    assert read_class_names(demo_data / "val") == expected


@pytest.mark.parametrize("what", ["count", "missing", "empty", "binary"])
def test_bad_classes_is_one_line_before_any_export(what, tutorial_pth, demo_data, tmp_path):
    _, pth = tutorial_pth
    path = {"count": demo_data, "missing": tmp_path / "nope.txt"}.get(what, tmp_path / "c.txt")
    if what == "empty":
        path.write_text("\n \n")
    if what == "binary":
        path.write_bytes(b"\xff\xfe\x00junk")
    r = cli("export", pth, "--out", tmp_path / "E", "--formats", "torchscript", "--classes", path)
    assert r.code == 2
    needle = {"count": "names 10 classes but the model's head has 5 outputs", "missing": "no such file",
              "empty": "no class names", "binary": "not UTF-8"}[what]
    assert_one_line(r.err, "--classes", needle)
    assert not (tmp_path / "E").exists()
