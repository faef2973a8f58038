import click
import pytest
import torch
import torchvision

from alexnet_deploy.errors import UserError
from alexnet_deploy.models import MODELS, build_model, load_weights, read_card, save_weights


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_torchvision_loads_our_weights_and_outputs_match(num_classes):
    torch.manual_seed(0)
    ours = build_model("alexnet", num_classes).eval()
    theirs = torchvision.models.alexnet(num_classes=num_classes).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)  # the adaptive pool makes any size >= 63 px a full forward pass
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_we_load_torchvision_state_dict_from_pth(tmp_path):
    theirs = torchvision.models.alexnet().eval()  # the format of IMAGENET1K_V1's file
    torch.save(theirs.state_dict(), tmp_path / "alexnet-owt.pth")
    ours, card = load_weights(tmp_path / "alexnet-owt.pth")
    assert card.arch == "alexnet" and card.num_classes == 1000
    assert card.classes[0] == "tench"  # ImageNet names come from torchvision's weights meta
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_alexnet_2012_has_paper_shapes_and_lrn():
    m = build_model("alexnet-2012", 1000)
    convs = [m_ for m_ in m.features if isinstance(m_, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.kernel_size for c in convs] == [(11, 11), (5, 5), (3, 3), (3, 3), (3, 3)]
    lrns = [m_ for m_ in m.features if isinstance(m_, torch.nn.LocalResponseNorm)]
    assert len(lrns) == 2
    assert all((m_.size, m_.alpha, m_.beta, m_.k) == (5, 1e-4, 0.75, 2.0) for m_ in lrns)
    # LRN sits right after the first two conv+ReLU blocks
    idx = [i for i, m_ in enumerate(m.features) if isinstance(m_, torch.nn.LocalResponseNorm)]
    assert idx == [2, 6]
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    # paper init: biases 1 in conv2/4/5 and hidden FCs, weights std ~0.01
    assert [float(c.bias.mean()) for c in convs] == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert abs(float(convs[2].weight.std()) - 0.01) < 1e-3


def test_registry_lists_the_alexnets_torchvision_first():
    assert list(MODELS)[:3] == ["alexnet", "alexnet-2012", "alexnet-384"]
    assert {"resnet18", "mobilenet_v3_small", "vit_b_16"} <= set(MODELS)  # torchvision's, by name
    with pytest.raises(UserError, match="choose one of"):
        build_model("resnet-9000")


def test_train_choices_are_the_registries(monkeypatch):
    """--arch, --init and --optimizer accept exactly what the library registers, read when parsed:
    a model registered by a user's plugin is a CLI choice without editing the CLI."""
    from alexnet_deploy import models as model
    from alexnet_deploy import training
    from alexnet_deploy.cli import cli

    train = cli.commands["train"]
    types = {p.name: p.type for p in train.params}
    assert types["arch"].choices == tuple(model.MODELS)
    assert types["init"].choices == tuple(model.INITS)
    assert types["optimizer"].choices == tuple(training.OPTIMIZER_DEFAULTS)
    monkeypatch.setitem(model.MODELS, "my-alexnet", model.MODELS["alexnet"])
    ctx = train.make_context("train", ["--data", "d", "--out", "o", "--arch", "my-alexnet"])
    assert ctx.params["arch"] == "my-alexnet"
    with pytest.raises(click.BadParameter, match=", ".join(repr(n) for n in model.MODELS)):
        train.make_context("train", ["--data", "d", "--out", "o", "--arch", "vgg"])


def test_safetensors_roundtrip_keeps_card(tmp_path, random_weights):
    model, card = load_weights(random_weights)
    assert card.num_classes == 10 and len(card.classes) == 10 and card.input.crop == 64
    save_weights(model, card, tmp_path / "again.safetensors")
    again = read_card(tmp_path / "again.safetensors")
    assert again.classes == card.classes and again.input == card.input
    # and torchvision loads the safetensors weights strictly
    from safetensors.torch import load_file
    tv = torchvision.models.alexnet(num_classes=10)
    tv.load_state_dict(load_file(tmp_path / "again.safetensors"), strict=True)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x00" * 64])
def test_corrupt_weights_give_user_error(tmp_path, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(UserError, match="bad.safetensors"):
        load_weights(p)


def test_pickled_object_is_refused(tmp_path):
    import pickle
    p = tmp_path / "evil.pth"
    p.write_bytes(pickle.dumps({"features.0.weight": object()}))
    with pytest.raises(UserError, match="weights_only"):
        load_weights(p)


def test_missing_weights_and_offline_torchvision(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        load_weights(tmp_path / "nope.safetensors")
    # offline: torchvision's download fails; the message names where to place the file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    import torch.hub
    def no_network(*a, **k):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth"):
        load_weights("torchvision")


def test_fine_tune_head_replacement(random_weights):
    model, card = load_weights(random_weights, num_classes=3)
    assert model.classifier[6].out_features == 3 and card.num_classes == 3


def test_loading_skips_the_random_init_and_keeps_buffers_computed_at_construction(monkeypatch):
    """load_weights builds the model on the meta device and copies the file's tensors in (AlexNet's
    random initialisation cost 0.33 s of every load); a module with a non-persistent buffer, which
    no file holds, is built as usual so that buffer keeps its computed value."""
    from torch import nn

    from alexnet_deploy import models as M

    class WithTable(nn.Module):
        def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
            super().__init__()
            self.fc = nn.Linear(4, num_classes)
            self.register_buffer("table", torch.arange(4.0) * 3, persistent=False)

    monkeypatch.setitem(M.MODELS, "with-table", WithTable)
    state = WithTable(3).state_dict()
    built = M._built_from("with-table", 3, state)
    assert torch.equal(built.table, torch.arange(4.0) * 3)
    assert torch.equal(built.fc.weight, state["fc.weight"]) and torch.equal(built.fc.bias, state["fc.bias"])

    torch.manual_seed(0)
    ref = M.build_model("mobilenet_v3_small", 10)  # batch-norm buffers too
    built = M._built_from("mobilenet_v3_small", 10, ref.state_dict())
    assert not any(t.is_meta for t in [*built.parameters(), *built.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), built.state_dict().values(), strict=True))
