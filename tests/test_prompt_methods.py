"""Mechanisms of L2P++, DualPrompt and CODA-Prompt (shared/reference/prompt-methods.md section 9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmark.backbones import build_backbone
from benchmark.registry import METHODS
from methods.coda_prompt import component_weights, gram_schmidt_rows

TINY_DIM = 128


def build(name: str, task_sizes=(4, 4, 4), backbone: str = "vit_tiny_synth", **overrides):
    """A prompt method on a random-init backbone (seeded)."""
    torch.manual_seed(0)
    cls = METHODS.get(name)
    defaults = cls.DATASET_DEFAULTS["synth"] if backbone == "vit_tiny_synth" else {}
    cfg = cls.Config(**{k: v for k, v in {**defaults, **overrides}.items() if k not in ("epochs", "lr")})
    return cls(build_backbone(backbone, pretrained=False), list(task_sizes), cfg)


def images(n: int = 6, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def enter(method, task: int) -> None:
    method.enter_task(task)
    with torch.no_grad():
        method.begin_task(task, [])
    method.train()


def prompt_grads(method, task: int, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Gradients of the training loss w.r.t. every prompt parameter and head (zeros if unreached)."""
    method.requires_grad_(False)
    params = dict(method.named_parameters())
    trainable = {n: p for n, p in params.items() if not n.startswith("backbone.")}
    for p in trainable.values():
        p.requires_grad_(True)
        p.grad = None
    if y is None:
        y = torch.full((len(x),), method.task_classes(task).start)
    method.training_loss(x, y, task).backward()
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in trainable.items()}


# -- the shared frame ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, overrides, expected", [
    ("l2p", {}, 483_840),
    ("l2p", {"deep": True}, 2_419_200),
    ("dualprompt", {}, 493_056),
    ("coda", {}, 3_840_000),
])
def test_trainable_prompt_parameters_of_vit_b16_match_the_reference(name, overrides, expected):
    """L2P++: 30 x (20 x 768 + 768) per block; DualPrompt (T=10): 2 x 6 x 768 g + 3 x 10 x
    (20 x 768 + 768) e; CODA-P: 5 blocks x 100 x (8 x 768 + 768 + 768). Head excluded."""
    method = build(name, task_sizes=[10] * 10, backbone="vit_base_patch16_224", **overrides)
    assert sum(p.numel() for p in method.prompt_parameters(0)) == expected


@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda"])
def test_query_ignores_prompts_and_holds_no_graph(name):
    method = build(name)
    enter(method, 0)
    method.requires_grad_(True)
    x = images()
    query = method.query(x)
    assert not query.requires_grad and query.grad_fn is None
    with torch.no_grad():
        for p in method.prompt_parameters(0):
            p.add_(torch.randn_like(p))
    assert torch.equal(method.query(x), query)
    method.backbone.requires_grad_(False)
    unprompted = method.features(x)
    assert torch.equal(unprompted, query)  # the query is the plain frozen backbone's CLS feature


@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda"])
def test_predict_in_inference_mode_equals_the_no_grad_forward(name):
    method = build(name)
    enter(method, 0)
    method.eval()
    x = images()
    with torch.no_grad():
        expected = method(x)
    assert torch.equal(method.predict(x), expected)


@pytest.mark.parametrize("name", ["l2p", "dualprompt", "coda"])
def test_training_masks_past_and_future_classes(name):
    method = build(name)
    for task in range(2):
        enter(method, task)
    x = images()
    y = torch.full((len(x),), method.task_classes(1).start + 1)
    grads = prompt_grads(method, 1, x, y)
    for part in ("weight", "bias"):
        assert torch.count_nonzero(grads[f"heads.heads.0.{part}"]) == 0
        assert torch.count_nonzero(grads[f"heads.heads.1.{part}"]) > 0
    assert method.prompted_logits(x, 1)[0].shape[1] == 8  # future classes are not computed


# -- L2P++ --------------------------------------------------------------------------------------

def test_l2p_selects_top_k_per_sample_and_lays_out_prefixes_prompt_by_prompt():
    method = build("l2p", pool_size=10, length=4, top_k=2)
    enter(method, 0)
    pool = method.pools["0"]
    query = method.query(images(4))
    with torch.no_grad():  # key j of sample j's own direction: each sample's best key differs
        pool.keys[:4] = query
    top, cosine = method.select(query, pool)
    expected = (F.normalize(query, dim=1) @ F.normalize(pool.keys, dim=1).T).topk(2, dim=1)
    assert torch.equal(top, expected.indices)
    torch.testing.assert_close(cosine, expected.values)
    assert top[:, 0].tolist() == [0, 1, 2, 3]
    values, _ = method.prompts(query, None)
    key_prefix, value_prefix = values[0]
    assert key_prefix.shape == value_prefix.shape == (4, 2 * 2, TINY_DIM)
    for b in range(4):
        chosen = pool.prompts[top[b]]  # (2, 4, D)
        assert torch.equal(key_prefix[b], chosen[:, :2].reshape(-1, TINY_DIM))
        assert torch.equal(value_prefix[b], chosen[:, 2:].reshape(-1, TINY_DIM))


def test_l2p_keys_learn_only_from_the_key_loss():
    x = images()
    method = build("l2p")
    enter(method, 0)
    grads = prompt_grads(method, 0, x)
    pool = method.pools["0"]
    keys = pool.keys.detach().clone().requires_grad_(True)
    query = method.query(x)
    cosine = F.normalize(query, dim=1) @ F.normalize(keys, dim=1).T
    (1 - cosine.topk(5, dim=1).values).sum().backward()
    torch.testing.assert_close(grads["pools.0.keys"], keys.grad)
    assert torch.count_nonzero(grads["pools.0.prompts"]) > 0

    silent = build("l2p", key_loss_weight=0.0)
    enter(silent, 0)
    assert torch.count_nonzero(prompt_grads(silent, 0, x)["pools.0.keys"]) == 0


def test_deep_l2p_prompts_the_first_five_blocks_or_all_of_a_shallower_backbone():
    assert build("l2p").prompt_blocks() == [0]
    assert build("l2p", deep=True).prompt_blocks() == [0, 1, 2, 3]  # the tiny ViT has 4 blocks


# -- DualPrompt ---------------------------------------------------------------------------------

def test_dualprompt_trains_only_the_current_e_prompt_and_key():
    method = build("dualprompt")
    for task in range(2):
        enter(method, task)
    grads = prompt_grads(method, 1, images())
    for block in ("2", "3"):
        for name in ("prompts", "keys"):
            grad = grads[f"e_pools.{block}.{name}"]
            assert torch.count_nonzero(grad[1]) > 0
            assert torch.count_nonzero(grad[0]) == 0 and torch.count_nonzero(grad[2]) == 0
    for block in ("0", "1"):
        assert torch.count_nonzero(grads[f"g_prompts.{block}"]) > 0


def test_dualprompt_key_loss_is_the_batch_sum_over_e_blocks():
    method = build("dualprompt")
    enter(method, 0)
    query = method.query(images())
    _, loss = method.prompts(query, 2)
    expected = sum((1 - F.cosine_similarity(query, pool.keys[2][None], dim=1)).sum()
                   for pool in method.e_pools.values())
    torch.testing.assert_close(loss, expected)


def test_dualprompt_inference_follows_each_blocks_own_key_match():
    method = build("dualprompt")
    enter(method, 0)
    query = method.query(images(3))
    with torch.no_grad():  # block 2 matches sample b to prompt b; block 3 matches everyone to 2
        method.e_pools["2"].keys.copy_(query)
        method.e_pools["3"].keys.copy_(-query)
        method.e_pools["3"].keys[2] = query.mean(0)
    values, loss = method.prompts(query, None)
    assert loss == 0
    half = method.cfg.e_length // 2
    for b in range(3):
        for block, expected in ((2, b), (3, 2)):
            prompt = method.e_pools[str(block)].prompts[expected]
            assert torch.equal(values[block][0][b], prompt[:half])
            assert torch.equal(values[block][1][b], prompt[half:])
    g_half = method.cfg.g_length // 2
    assert torch.equal(values[0][0][0], method.g_prompts["0"][:g_half])
    assert values[1][1].shape == (3, g_half, TINY_DIM)


def test_dualprompt_block_with_both_prompts_puts_e_tokens_first():
    method = build("dualprompt", g_blocks=[2], e_blocks=[2])
    enter(method, 0)
    values, _ = method.prompts(method.query(images(2)), 0)
    key_prefix, value_prefix = values[2]
    e_half, g_half = method.cfg.e_length // 2, method.cfg.g_length // 2
    assert key_prefix.shape[1] == e_half + g_half
    assert torch.equal(key_prefix[0, :e_half], method.e_pools["2"].prompts[0, :e_half])
    assert torch.equal(value_prefix[0, e_half:], method.g_prompts["2"][g_half:])


# -- CODA-Prompt --------------------------------------------------------------------------------

def rows_of(pool):
    return {"keys": pool.keys, "attention": pool.attention, "components": pool.components.flatten(1)}


def test_coda_gram_schmidt_slice_is_orthonormal_and_orthogonal_to_orthonormal_old_rows():
    method = build("coda", task_sizes=[4] * 5)  # 100 components: 20 per task
    enter(method, 0)
    pool = method.pools["0"]
    with torch.no_grad():  # make the old rows orthonormal (trained rows need not be)
        for rows in rows_of(pool).values():
            rows[:20] = torch.linalg.qr(torch.randn(rows.shape[1], 20))[0].T
    before = {name: rows.detach().clone() for name, rows in rows_of(pool).items()}
    enter(method, 1)
    for name, rows in rows_of(pool).items():
        rows = rows.detach()
        assert torch.equal(rows[:20], before[name][:20]), name
        gram = rows[:40] @ rows[:40].T
        torch.testing.assert_close(gram, torch.eye(40), atol=1e-5, rtol=0)
        assert torch.count_nonzero(rows[40:]) == 0, f"{name}: rows of future tasks must stay zero"


def test_gram_schmidt_skips_zero_rows_and_keeps_earlier_rows():
    torch.manual_seed(0)
    matrix = torch.zeros(6, 16)
    matrix[0] = F.normalize(torch.randn(16), dim=0)
    gram_schmidt_rows(matrix, 2, 5)  # row 1 is zero: skipped, not retried forever
    assert torch.count_nonzero(matrix[1]) == 0 and torch.count_nonzero(matrix[5]) == 0
    chosen = matrix[[0, 2, 3, 4]]
    torch.testing.assert_close(chosen @ chosen.T, torch.eye(4), atol=1e-6, rtol=0)


def test_coda_past_components_get_zero_gradient_and_future_ones_are_unused():
    method = build("coda", task_sizes=[4] * 5)
    for task in range(3):
        enter(method, task)
    x = images()
    grads = prompt_grads(method, 2, x)
    for block in method.pools:
        for name in ("components", "keys", "attention"):
            grad = grads[f"pools.{block}.{name}"]
            assert torch.count_nonzero(grad[:40]) == 0, f"past {name} of block {block} got gradient"
            assert torch.count_nonzero(grad[40:60]) > 0
            assert torch.count_nonzero(grad[60:]) == 0
    method.eval()
    train_loss = method.training_loss(x, torch.full((6,), 8), 2).detach()
    logits = method.predict(x)
    with torch.no_grad():
        for pool in method.pools.values():
            for tensor in (pool.components, pool.keys, pool.attention):
                tensor[60:] = torch.randn_like(tensor[60:])
    assert torch.equal(method.predict(x), logits)
    assert torch.equal(method.training_loss(x, torch.full((6,), 8), 2).detach(), train_loss)


def test_coda_weights_are_cosines_of_the_attended_query_with_the_keys():
    torch.manual_seed(0)
    query, keys, attention = torch.randn(5, 32), torch.randn(7, 32), torch.randn(7, 32)
    alpha = component_weights(query, keys, attention)
    direct = F.cosine_similarity(query[:, None] * attention[None], keys[None], dim=2)
    torch.testing.assert_close(alpha, direct, atol=1e-6, rtol=1e-5)
    assert alpha.abs().max() <= 1 + 1e-6
    plain = component_weights(query, keys, torch.ones_like(attention))
    torch.testing.assert_close(plain, F.cosine_similarity(query[:, None], keys[None], dim=2))


def test_coda_prompt_is_the_alpha_weighted_sum_of_components():
    method = build("coda", task_sizes=[4] * 5)
    enter(method, 0)
    query = method.query(images(3))
    values, loss = method.prompts(query, None)
    pool = method.pools["1"]
    alpha = component_weights(query, pool.keys[:20], pool.attention[:20])
    prompt = torch.einsum("bm,mld->bld", alpha, pool.components[:20])
    torch.testing.assert_close(values[1][0], prompt[:, :4])
    torch.testing.assert_close(values[1][1], prompt[:, 4:])
    assert loss == 0


def test_coda_ortho_penalty_is_mu_times_the_gram_error_of_the_visible_slice_in_training_only():
    method = build("coda", task_sizes=[4] * 5, ortho_weight=0.5)
    enter(method, 0)
    with torch.no_grad():  # trained rows drift from orthonormal
        for pool in method.pools.values():
            for tensor in (pool.components, pool.keys, pool.attention):
                tensor[:20] += 0.1 * torch.randn_like(tensor[:20])
    enter(method, 1)
    query = method.query(images(3))
    _, loss = method.prompts(query, 1)

    def gram_error(rows):
        return ((rows @ rows.T - torch.eye(len(rows))) ** 2).mean()

    expected = sum(0.5 * (gram_error(p.keys[:40]) + gram_error(p.attention[:40])
                          + gram_error(p.components[:40].flatten(1))) for p in method.pools.values())
    assert expected > 1e-4
    torch.testing.assert_close(loss, expected)
    _, eval_loss = method.prompts(query, None)
    assert eval_loss == 0


def test_coda_first_slice_is_orthonormal_and_checkpoints_keep_the_init_stream():
    method = build("coda", task_sizes=[4] * 5)
    enter(method, 0)
    for name, rows in rows_of(method.pools["2"]).items():
        rows = rows.detach()
        torch.testing.assert_close(rows[:20] @ rows[:20].T, torch.eye(20), atol=1e-5, rtol=0)
        assert torch.count_nonzero(rows[20:]) == 0, name
    state = method.checkpoint_state()
    restored = build("coda", task_sizes=[4] * 5)
    torch.manual_seed(123)  # the restored generator, not the global RNG, drives the next init
    restored.load_checkpoint_state(state)
    enter(method, 1)
    enter(restored, 1)
    for a, b in zip(method.pools.parameters(), restored.pools.parameters()):
        assert torch.equal(a, b)


def test_prompt_matching_stays_float32_under_bf16_autocast():
    method = build("l2p")
    enter(method, 0)
    query = method.query(images(8))
    keys, attention = torch.randn(5, TINY_DIM), torch.randn(5, TINY_DIM)
    top, cosine = method.select(query, method.pools["0"])
    alpha = component_weights(query, keys, attention)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        top_bf16, cosine_bf16 = method.select(query, method.pools["0"])
        alpha_bf16 = component_weights(query, keys, attention)
    assert cosine_bf16.dtype == alpha_bf16.dtype == torch.float32
    assert torch.equal(top_bf16, top) and torch.equal(cosine_bf16, cosine) and torch.equal(alpha_bf16, alpha)


def test_training_loss_is_the_masked_cross_entropy_plus_the_key_loss():
    method = build("dualprompt")
    enter(method, 0)
    x, y = images(), torch.tensor([0, 1, 2, 3, 0, 1])
    logits, aux = method.prompted_logits(x, 0)
    expected = F.cross_entropy(logits, y) + aux
    torch.testing.assert_close(method.training_loss(x, y, 0), expected)


def test_coda_needs_a_component_per_task():
    from benchmark.errors import ConfigError

    with pytest.raises(ConfigError, match="at least one component per task"):
        build("coda", task_sizes=[1] * 10, pool_size=5)
