"""Prefix-tuning attention (methods/prefix.py) against timm's attention and a direct computation."""

from __future__ import annotations

import pytest
import torch

from benchmark.backbones import backbone_features, build_tiny_vit
from benchmark.errors import ConfigError
from methods.prefix import PrefixAttention, add_prefix_attention, prefixes


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_tiny_vit().eval()


def block_input(model, batch: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 17, model.embed_dim)


def reference_prefix_attention(attn, x, key_prefix, value_prefix):
    """softmax(q [Pk; K]^T / sqrt(d_h)) [Pv; V], then the output projection, written out."""
    batch, n_tokens, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(batch, n_tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    split = lambda t: t.reshape(batch, t.shape[1], heads, head_dim).transpose(1, 2)  # noqa: E731
    k = torch.cat([split(key_prefix), k], dim=2)
    v = torch.cat([split(value_prefix), v], dim=2)
    weights = torch.softmax(q @ k.transpose(-2, -1) / head_dim ** 0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(batch, n_tokens, dim)
    return attn.proj(out)


def test_without_prefix_the_wrapper_is_timm_attention_bit_for_bit(model):
    images = torch.rand(4, 3, 32, 32)
    plain = backbone_features(model, images)
    add_prefix_attention(model, [0, 1, 2, 3])
    assert isinstance(model.blocks[0].attn, PrefixAttention)
    assert torch.equal(backbone_features(model, images), plain)


def test_zero_length_prefixes_everywhere_leave_the_features_bit_identical(model):
    images = torch.rand(4, 3, 32, 32)
    plain = backbone_features(model, images)
    layers = add_prefix_attention(model, [0, 1, 2, 3])
    empty = torch.zeros(4, 0, model.embed_dim)
    with prefixes(layers, {b: (empty, empty) for b in layers}):
        assert torch.equal(backbone_features(model, images), plain)


def test_zero_length_prefix_equals_timm_attention(model):
    x = block_input(model)
    attn = model.blocks[0].attn
    expected = attn(x)
    layer = add_prefix_attention(model, [0])[0]
    empty = x.new_zeros(len(x), 0, model.embed_dim)
    with prefixes({0: layer}, {0: (empty, empty)}):
        out = layer(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("length", [1, 3, 10])
def test_prefix_attention_equals_direct_computation(model, length):
    x = block_input(model)
    attn = model.blocks[1].attn
    layer = add_prefix_attention(model, [1])[1]
    torch.manual_seed(2)
    key_prefix = torch.randn(len(x), length, model.embed_dim)
    value_prefix = torch.randn(len(x), length, model.embed_dim)
    with prefixes({1: layer}, {1: (key_prefix, value_prefix)}):
        out = layer(x)
    assert out.shape == x.shape  # the block keeps N tokens; only K and V grow
    torch.testing.assert_close(out, reference_prefix_attention(attn, x, key_prefix, value_prefix),
                               atol=1e-5, rtol=1e-5)


def test_prefixed_blocks_keep_the_token_count(model):
    layers = add_prefix_attention(model, [0, 2])
    images = torch.rand(2, 3, 32, 32)
    tokens = torch.randn(2, 7, model.embed_dim)
    with prefixes(layers, {0: (tokens, tokens), 2: (tokens, tokens)}):
        out = model.forward_features(images)
    assert out.shape == (2, 17, model.embed_dim)


def test_a_nonzero_prefix_changes_features_and_zero_keys_still_take_attention_mass(model):
    layers = add_prefix_attention(model, [0])
    images = torch.rand(2, 3, 32, 32)
    plain = backbone_features(model, images)
    zeros = torch.zeros(2, 4, model.embed_dim)
    with prefixes(layers, {0: (zeros, zeros)}):
        prefixed = backbone_features(model, images)
    assert not torch.allclose(prefixed, plain, atol=1e-4)


def test_prefixes_are_cleared_even_when_the_forward_fails(model):
    layers = add_prefix_attention(model, [0])
    tokens = torch.randn(2, 4, model.embed_dim)
    with pytest.raises(RuntimeError):
        with prefixes(layers, {0: (tokens, tokens)}):
            raise RuntimeError("boom")
    assert layers[0].prefix is None


def test_prefix_for_a_block_without_wrapper_is_refused(model):
    layers = add_prefix_attention(model, [0])
    tokens = torch.randn(2, 4, model.embed_dim)
    with pytest.raises(ValueError, match="blocks \\[3\\]"):
        with prefixes(layers, {3: (tokens, tokens)}):
            pass


def test_blocks_beyond_the_depth_are_left_out_with_a_warning_and_none_left_is_an_error(model):
    with pytest.warns(UserWarning, match="blocks \\[4\\] are left out"):
        assert list(add_prefix_attention(model, [0, 4])) == [0]
    with pytest.raises(ConfigError, match="blocks 0-3"):
        add_prefix_attention(model, [4, 5])


def test_wrapping_twice_reuses_the_wrapper(model):
    first = add_prefix_attention(model, [0])[0]
    assert add_prefix_attention(model, [0, 1])[0] is first
