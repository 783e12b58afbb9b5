"""The branch composer against a fake model whose branches are known functions of (row, branch)."""

import pytest
import torch

from lib_loratorio.branch_runner import MIXED
from lib_loratorio.composer import BranchComposer
from lib_loratorio.composition import compose, switch_branch
from lib_loratorio.errors import LoratorioError, NonFiniteError
from lib_loratorio.params import LoratorioParams

N, C, H, W = 3, 4, 16, 16


class FakeModel:
    """Branch b of host row r predicts base(r) + bump_b, bump_b localised in a quadrant per LoRA."""

    def __init__(self, x, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = x
        self.row_term = torch.randn(x.shape[0], C, H, W, generator=g)
        self.bumps = torch.zeros(N + 1, C, H, W)
        for i in range(1, N + 1):
            self.bumps[i] = 0.05 * torch.randn(C, H, W, generator=g)
            q = i - 1
            self.bumps[i, :, (q // 2) * 8:(q // 2) * 8 + 8, (q % 2) * 8:(q % 2) * 8 + 8] *= 40
        self.calls = []

    def predict(self, row, branch):
        return 0.5 * self.x[row] + self.row_term[row] + self.bumps[branch]

    def __call__(self, rows, branches):
        self.calls.append((rows.tolist(), branches.tolist()))
        return torch.stack([self.predict(int(r), int(b)) for r, b in zip(rows, branches, strict=True)])


LABELS = [f"LoRA '{name}'" for name in ("alice", "hat", "forest")]


def params(**kw):
    """The paper's method unless a test says otherwise (the defaults are LoRAtorio Fast with weights max)."""
    return LoratorioParams(enabled=True, patch_size=4, temperature=0.05, **{"mode": "LoRAtorio", "weight_norm": "sum",
                                                                          **kw})


def composer(p=None, **kw):
    return BranchComposer(p or params(), LABELS, prediction=kw.pop("prediction", "eps"), **kw)


def run(model, x, is_uncond, image_of_row, p=None, step=0, **call):
    """One composed call of a fresh composer (eps host)."""
    return composer(p)(x, is_uncond, image_of_row, step=step, evaluate=model, **call)


def expected(model, cond_row, uncond_row, p, cond_rows_of_image=None):
    """compose() on eps-like predictions of one image (the fake model is an eps host)."""
    base_c = model.predict(cond_row, 0)[None]
    lora_c = torch.stack([model.predict(cond_row, b)[None] for b in range(1, N + 1)])
    base_u = model.predict(uncond_row, 0)[None]
    lora_u = torch.stack([model.predict(uncond_row, b)[None] for b in range(1, N + 1)])
    return compose(base_c, base_u, lora_c, lora_u, patch_size=p.patch_size, temperature=p.temperature,
                   recenter=p.recenter)


def test_batch_of_images_cond_and_uncond_in_one_call():
    # A1111 layout: cond rows of all images first, then uncond rows.
    x = torch.randn(4, C, H, W)
    model = FakeModel(x)
    p = params()
    out = run(model, x, [False, False, True, True], [0, 1, 0, 1], p)
    for c, u in [(0, 2), (1, 3)]:
        ref = expected(model, c, u, p)
        assert torch.allclose(out[c], ref.cond[0], atol=1e-6)
        assert torch.allclose(out[u], ref.uncond[0], atol=1e-6)
    assert len(model.calls) == 1 and len(model.calls[0][0]) == 4 * (N + 1)
    # rows are grouped by branch, so each LoRA owns one contiguous slice of the batch
    assert model.calls[0][1] == sorted(model.calls[0][1])


def test_the_routing_follows_the_divergent_lora():
    x = torch.randn(2, C, H, W)
    comp = composer(keep_weight_maps=True)
    comp(x, [False, True], [0, 0], step=0, evaluate=FakeModel(x))
    w = comp.last_weight_maps[0]
    assert w.shape == (N, H, W)
    assert w[0, :8, :8].mean() > 0.9 and w[1, :8, 8:].mean() > 0.9 and w[2, 8:, :8].mean() > 0.9


def test_several_cond_rows_per_image_and_uncond_weights_are_their_mean():
    x = torch.randn(3, C, H, W)
    model = FakeModel(x)
    p = params()
    out = run(model, x, [False, False, True], [0, 0, 0], p, step=3)   # prompt "a AND b": two cond rows
    w0 = expected(model, 0, 2, p).weights
    w1 = expected(model, 1, 2, p).weights
    mean_w = (w0 + w1) / 2
    lora_u = torch.stack([model.predict(2, b) for b in range(1, N + 1)])
    ref_u = 0.5 * model.predict(2, 0) + 0.5 * (mean_w[:, 0, None] * lora_u).sum(0)
    assert torch.allclose(out[2], ref_u, atol=1e-6)
    assert torch.allclose(out[0], expected(model, 0, 2, p).cond[0], atol=1e-6)


def test_cond_and_uncond_in_separate_calls_reuse_the_step_weights():
    x = torch.randn(2, C, H, W)
    model = FakeModel(x)
    together = run(model, x, [False, True], [0, 0], step=5)
    split = composer()
    cond = split(x[:1], [False], [0], step=5, evaluate=model)
    # the host's second call sees only the uncond row: its evaluator is that call's own
    model_u = FakeModel(x)
    uncond = split(x[1:], [True], [0], step=5, evaluate=lambda rows, branches: model_u(rows + 1, branches))
    assert torch.allclose(cond[0], together[0], atol=1e-6)
    assert torch.allclose(uncond[0], together[1], atol=1e-6)
    assert split.uncond_fallbacks == 0


def test_weights_from_an_earlier_step_are_not_reused():
    x = torch.randn(2, C, H, W)
    comp = composer()
    comp(x[:1], [False], [0], step=0, evaluate=FakeModel(x))
    comp(x[1:], [True], [0], step=1, evaluate=lambda rows, branches: FakeModel(x)(rows + 1, branches))
    assert comp.uncond_fallbacks == 1


def test_skipped_uncond_and_distilled_hosts_send_only_cond_rows():
    x = torch.randn(2, C, H, W)
    model = FakeModel(x)
    out = run(model, x, [False, False], [0, 1])
    assert torch.allclose(out[1], expected(model, 1, 1, params()).cond[0], atol=1e-6)


def test_x0_host_equals_eps_host():
    x = torch.randn(2, C, H, W) * 4
    sigma = 3.0
    eps_model = FakeModel(x)
    x0_model = lambda rows, branches: x[rows] - sigma * eps_model(rows, branches)  # noqa: E731
    eps = run(eps_model, x, [False, True], [0, 0])
    x0 = composer(prediction="x0")(x, [False, True], [0, 0], step=0, evaluate=x0_model)
    assert torch.allclose(x0, x - sigma * eps, atol=1e-5)


def test_recenter_one_skips_the_lora_uncond_evaluations():
    x = torch.randn(2, C, H, W)
    model = FakeModel(x)
    out = run(model, x, [False, True], [0, 0], params(recenter=1.0))
    rows, branches = model.calls[0]
    assert len(rows) == N + 2 and branches.count(0) == 2
    assert torch.equal(out[1], model.predict(1, 0))


def test_a_host_forced_recentring_overrides_the_setting_for_that_call_only():
    x = torch.randn(2, C, H, W)
    forced, free = FakeModel(x), FakeModel(x)
    comp = composer(params(recenter=0.0))
    out = comp(x, [False, True], [0, 0], step=0, evaluate=forced, recenter=1.0)
    assert torch.equal(out[1], forced.predict(1, 0)) and len(forced.calls[0][0]) == N + 2
    comp(x, [False, True], [0, 0], step=1, evaluate=free)
    assert len(free.calls[0][0]) == 2 * (N + 1)


def test_chunks_give_the_same_result():
    x = torch.randn(4, C, H, W)
    layout = ([False, False, True, True], [0, 1, 0, 1])
    full = run(FakeModel(x), x, *layout)
    model = FakeModel(x)
    assert torch.allclose(full, run(model, x, *layout, params(max_batch=3)))
    assert [len(r) for r, _ in model.calls] == [3, 3, 3, 3, 3, 1]
    # a host's limit for one call (e.g. Forge's free-memory estimate); the smaller limit wins
    model = FakeModel(x)
    assert torch.allclose(full, run(model, x, *layout, params(max_batch=3), batch_limit=7))
    assert [len(r) for r, _ in model.calls] == [3, 3, 3, 3, 3, 1]
    model = FakeModel(x)
    assert torch.allclose(full, run(model, x, *layout, batch_limit=7))
    assert [len(r) for r, _ in model.calls] == [7, 7, 2]


def test_per_branch_evaluation_makes_one_call_per_branch():
    x = torch.randn(4, C, H, W)
    model = FakeModel(x)
    layout = ([False, False, True, True], [0, 1, 0, 1])
    out = run(model, x, *layout, params(evaluation="per branch"))
    assert torch.allclose(out, run(FakeModel(x), x, *layout))
    assert [sorted(set(b)) for _, b in model.calls] == [[0], [1], [2], [3]]


def test_out_of_memory_halves_the_chunk_and_remembers_it():
    x = torch.randn(2, C, H, W)
    model = FakeModel(x)

    def tight(rows, branches):
        if len(rows) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return model(rows, branches)

    comp = composer()
    out = comp(x, [False, True], [0, 0], step=0, evaluate=tight)
    assert torch.allclose(out, run(FakeModel(x), x, [False, True], [0, 0])) and comp.oom_batch_limit == 2
    model.calls.clear()
    comp(x, [False, True], [0, 0], step=1, evaluate=tight)       # the next call starts at the halved size
    assert [len(r) for r, _ in model.calls] == [2, 2, 2, 2]

    def hopeless(rows, branches):
        raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    with pytest.raises(LoratorioError, match="Out of memory even when evaluating one branch row"):
        run(hopeless, x, [False, True], [0, 0])


def test_switch_mode_runs_one_branch_per_row():
    x = torch.randn(2, C, H, W)
    for step in (0, 5, 10, 15):
        model = FakeModel(x)
        out = run(model, x, [False, True], [0, 0], params(mode="Switch"), step=step)
        b = switch_branch(step, N, 5) + 1
        assert model.calls[0][1] == [b, b]
        assert torch.equal(out[0], model.predict(0, b)) and torch.equal(out[1], model.predict(1, b))


def test_composite_mode_averages_the_loras_without_the_base():
    x = torch.randn(2, C, H, W)
    model = FakeModel(x)
    out = run(model, x, [False, True], [0, 0], params(mode="Composite"))
    assert 0 not in model.calls[0][1]
    assert torch.allclose(out[1], torch.stack([model.predict(1, b) for b in range(1, N + 1)]).mean(0), atol=1e-6)


@pytest.mark.parametrize("mode", ["LoRAtorio", "Composite", "Switch"])
def test_nan_in_a_branch_is_named_by_its_label(mode):
    x = torch.randn(2, C, H, W)
    model = FakeModel(x)
    model.bumps[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="^LoRA 'alice' produced NaN or inf in its conditional prediction. "
                                             "Lower its strength"):
        run(model, x, [False, True], [0, 0], params(mode=mode))
    model = FakeModel(x)
    model.row_term[1, 0, 0, 0] = float("inf")                     # every branch of the uncond row
    with pytest.raises(NonFiniteError, match="^The base model produced NaN or inf in its unconditional prediction"):
        run(model, x, [False, True], [0, 0])


def test_mean_weight_maps_over_steps():
    x = torch.randn(4, C, H, W)
    comp = composer(keep_weight_maps=True)
    for step in range(3):
        comp(x, [False, False, True, True], [0, 1, 0, 1], step=step, evaluate=FakeModel(x))
    maps = comp.mean_weight_maps()
    assert sorted(maps) == [0, 1] and comp.weight_map_counts == {0: 3, 1: 3}
    assert torch.allclose(maps[0].sum(0), torch.ones(H, W), atol=1e-6)


def test_layout_mismatch_and_no_lora_are_errors():
    x = torch.randn(2, C, H, W)
    with pytest.raises(LoratorioError, match="Row layout"):
        composer()(x, [False], [0], step=0, evaluate=FakeModel(x))
    with pytest.raises(LoratorioError, match="at least one LoRA"):
        BranchComposer(params(), [])


# --- LoRAtorio Fast ---------------------------------------------------------------------------------------
class MixingModel(FakeModel):
    """Also answers MIXED rows: base + sum_i map_i * bump_i, as a network whose LoRAs act linearly would."""

    def __call__(self, rows, branches, maps=None):
        self.calls.append((rows.tolist(), branches.tolist(), None if maps is None else maps.clone()))
        out, m = [], 0
        for r, b in zip(rows.tolist(), branches.tolist(), strict=True):
            if b == MIXED:
                out.append(self.predict(r, 0) + (maps[m].unsqueeze(1) * self.bumps[1:]).sum(0))
                m += 1
            else:
                out.append(self.predict(r, b))
        return torch.stack(out)


def test_fast_mode_refreshes_on_its_schedule_and_mixes_by_the_last_maps_between():
    x = torch.randn(2, C, H, W)
    model = MixingModel(x)
    p = params(mode="LoRAtorio Fast", refresh_first=2, refresh_every=3, recenter=0.5)
    comp = composer(p)
    outs = [comp(x, [False, True], [0, 0], step=s, evaluate=model) for s in range(7)]
    assert comp.refresh_steps == {0, 1, 3, 6}
    refresh_maps = {}
    for step, (rows, branches, maps) in enumerate(model.calls):
        if step in comp.refresh_steps:     # every branch on the prompt row, the base on the negative row
            assert sorted(zip(rows, branches, strict=True)) == [(0, b) for b in range(N + 1)] + [(1, 0)]
            assert maps is None
            ref = compose(*(model.predict(0, 0)[None], model.predict(1, 0)[None],
                            torch.stack([model.predict(0, b)[None] for b in range(1, N + 1)]),
                            torch.stack([model.predict(1, b)[None] for b in range(1, N + 1)])),
                          patch_size=4, temperature=0.05, recenter=1.0)   # re-centring 1 in the fast mode
            torch.testing.assert_close(outs[step][0], ref.cond[0])
            torch.testing.assert_close(outs[step][1], ref.uncond[0])
            refresh_maps = ref.weights[:, 0]
        else:                              # one row each: the prompt MIXED by the last refresh's maps
            assert sorted(zip(rows, branches, strict=True)) == [(0, MIXED), (1, 0)]
            torch.testing.assert_close(maps[0], refresh_maps)
            torch.testing.assert_close(outs[step][1], model.predict(1, 0))
            torch.testing.assert_close(outs[step][0], model.predict(0, 0) + (refresh_maps.unsqueeze(1)
                                                                             * model.bumps[1:]).sum(0))


def test_fast_mode_separate_calls_and_weight_maps_of_every_step():
    """A host that sends the negative rows in a call of their own, and two images: each prompt row gets
    its own image's maps; the weight maps shown average the refresh maps over every step."""
    x = torch.randn(4, C, H, W)
    model = MixingModel(x)
    comp = composer(params(mode="LoRAtorio Fast", refresh_first=1, refresh_every=10), keep_weight_maps=True)
    for step in range(3):
        comp(x[:2], [False, False], [0, 1], step=step, evaluate=model)
        comp(x[2:], [True, True], [0, 1], step=step, evaluate=model)
    rows, branches, maps = model.calls[2]          # step 1, prompt rows
    assert branches == [MIXED, MIXED] and not torch.allclose(maps[0], maps[1])
    assert model.calls[3][1] == [0, 0]             # step 1, negative rows: the base model
    assert comp.weight_map_counts == {0: 3, 1: 3}
    torch.testing.assert_close(comp.mean_weight_maps()[0], comp.last_weight_maps[0])


def test_weight_norm_max_adds_each_loras_change_at_its_share_of_the_owner():
    from lib_loratorio.composition import owner_weights, patch_weights, recentred_uncond

    x = torch.randn(2, C, H, W)
    model = FakeModel(x)
    p = params(weight_norm="max", recenter=0.5)
    out = run(model, x, [False, True], [0, 0], p)
    base_c, base_u = model.predict(0, 0)[None], model.predict(1, 0)[None]
    lora_c = torch.stack([model.predict(0, b)[None] for b in range(1, N + 1)])
    lora_u = torch.stack([model.predict(1, b)[None] for b in range(1, N + 1)])
    a = owner_weights(patch_weights(lora_c, base_c, patch_size=4, temperature=0.05))
    expected_c = base_c + (a.unsqueeze(2) * (lora_c - base_c)).sum(0)
    torch.testing.assert_close(out[0], expected_c[0])
    torch.testing.assert_close(out[1], recentred_uncond(a, base_u, lora_u, 0.5, relative=True)[0])
    assert not torch.allclose(out[0], run(model, x, [False, True], [0, 0], params(recenter=0.5))[0])


def test_fast_mode_mixes_by_the_owner_weights_with_weight_norm_max():
    from lib_loratorio.composition import owner_weights

    x = torch.randn(2, C, H, W)
    model = MixingModel(x)
    comp = composer(params(mode="LoRAtorio Fast", refresh_first=1, refresh_every=5, weight_norm="max"))
    for step in range(2):
        comp(x, [False, True], [0, 0], step=step, evaluate=model)
    _, branches, maps = model.calls[1]
    assert branches[0] == MIXED
    torch.testing.assert_close(maps[0], owner_weights(comp._refresh_maps[0]))


def test_stack_runs_every_lora_on_the_prompt_rows_and_the_base_on_the_negative_rows():
    from lib_loratorio.region_hints import parse_region
    x = torch.randn(4, C, H, W)  # two images: prompt rows 0 and 2, negative rows 1 and 3
    model = MixingModel(x)
    comp = composer(params(mode="Stack"), keep_weight_maps=True)
    outs = [comp(x, [False, True, False, True], [0, 0, 1, 1], step=s, evaluate=model) for s in range(3)]
    assert not comp.refresh_steps  # no branch runs alone: two rows a step, as a plain step
    for (rows, branches, maps), out in zip(model.calls, outs, strict=True):
        assert sorted(zip(rows, branches, strict=True)) == [(0, MIXED), (1, 0), (2, MIXED), (3, 0)]
        assert torch.equal(maps, torch.ones(2, N, H, W))  # every LoRA fully, everywhere
        for r in (0, 2):   # base + every LoRA's change
            torch.testing.assert_close(out[r], model.predict(r, 0) + model.bumps[1:].sum(0))
        for r in (1, 3):
            torch.testing.assert_close(out[r], model.predict(r, 0))
    assert torch.equal(comp.mean_weight_maps()[1], torch.ones(N, H, W))
    # with region hints each hinted LoRA acts inside its region (e^-strength outside); the others everywhere
    model = MixingModel(x[:2])
    hinted = composer(params(mode="Stack", hint_strength=4.0), hints=[parse_region("left"), None, None])
    hinted(x[:2], [False, True], [0, 0], step=0, evaluate=model)
    maps = model.calls[0][2][0]
    assert torch.equal(maps[0, :, : W // 2], torch.ones(H, W // 2))
    torch.testing.assert_close(maps[0, :, W // 2:], torch.full((H, W // 2), torch.tensor(-4.0).exp().item()))
    assert torch.equal(maps[1:], torch.ones(N - 1, H, W))
