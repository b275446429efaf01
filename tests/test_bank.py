import random
import threading

import pytest
import torch

from shira_diffusion import ShiraError, StyleBank

from conftest import TINY_SD, TINY_SDXL, dense_reference, forward, make_adapter, make_unet, unet_inputs


def _snapshot(unet):
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def _assert_bit_identical(unet, snapshot):
    for key, value in unet.state_dict().items():
        assert torch.equal(value, snapshot[key]), key


def _bank_with_styles(unet, dtype):
    """Four adapters in three mask groups (two share a struct mask, rand and wm differ), some overlapping."""
    adapters = {
        "ink": make_adapter(unet, "ink", "struct", seed=1, dtype=dtype),
        "pastel": make_adapter(unet, "pastel", "struct", seed=2, dtype=dtype),
        "grain": make_adapter(unet, "grain", "rand", seed=3, dtype=dtype, density=0.05),
        "bold": make_adapter(unet, "bold", "wm", targets="all", seed=4, dtype=dtype, density=0.02),
    }
    bank = StyleBank(unet)
    for adapter in adapters.values():
        bank.add(adapter)
    return bank, adapters


@pytest.mark.parametrize("config", [TINY_SD, TINY_SDXL], ids=["sd", "sdxl"])
def test_mix_equals_dense_reference(config):
    unet = make_unet(config)
    pristine = _snapshot(unet)
    bank, adapters = _bank_with_styles(unet, torch.float32)
    params = dict(unet.named_parameters())
    for mix in ({"ink": 1.0}, {"ink": 0.5, "pastel": -0.7}, {"grain": 1.0, "bold": 0.3, "ink": 0.2}):
        expected = dense_reference(pristine, mix, adapters)
        bank.apply(mix)
        for tensor, value in expected.items():
            torch.testing.assert_close(params[tensor].detach(), value, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "dtype, values_dtype",
    # (fp32, fp16) is the everyday case: a CPU pipeline in fp32, adapters saved in fp16.
    [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
     (torch.float32, torch.float16), (torch.float16, torch.float32)],
)
def test_bit_exact_restore_after_1000_random_switches(dtype, values_dtype):
    unet = make_unet(TINY_SD, dtype=dtype)
    snapshot = _snapshot(unet)
    bank, adapters = _bank_with_styles(unet, values_dtype)
    names = list(adapters)
    rng = random.Random(0)
    for step in range(1000):
        k = rng.randint(0, len(names))
        mix = {name: rng.choice([1.0, 0.5, -0.3, 1.7]) for name in rng.sample(names, k)}
        bank.apply(mix)
        assert bank.active == mix
        if step % 97 == 0:
            bank.restore()
            _assert_bit_identical(unet, snapshot)
    bank.restore()
    _assert_bit_identical(unet, snapshot)


def test_switch_touches_only_the_entries_involved():
    unet = make_unet(TINY_SD)
    snapshot = _snapshot(unet)
    bank, adapters = _bank_with_styles(unet, torch.float32)
    bank.apply({"ink": 1.0})
    bank.apply({"pastel": 1.0})
    touched = {n: adapters["pastel"].indices[n].long() for n in adapters["pastel"].shapes}
    for key, value in unet.state_dict().items():
        if key in touched:
            outside = torch.ones(value.numel(), dtype=torch.bool)
            outside[touched[key]] = False
            assert torch.equal(value.flatten()[outside], snapshot[key].flatten()[outside]), key
        else:
            assert torch.equal(value, snapshot[key]), key


def test_outputs_follow_the_mix_and_come_back():
    unet = make_unet(TINY_SD)
    inputs = unet_inputs(unet)
    base = forward(unet, inputs)
    bank, _ = _bank_with_styles(unet, torch.float32)
    bank.apply({"ink": 1.0})
    ink = forward(unet, inputs)
    bank.apply({"pastel": 1.0})
    bank.apply({"ink": 1.0})
    assert torch.equal(forward(unet, inputs), ink)
    assert not torch.equal(ink, base)
    bank.apply({})
    assert torch.equal(forward(unet, inputs), base)


def test_zero_weights_are_dropped_and_names_checked():
    unet = make_unet(TINY_SD)
    bank, _ = _bank_with_styles(unet, torch.float32)
    bank.apply({"ink": 0.0, "pastel": 1.0})
    assert bank.active == {"pastel": 1.0}
    with pytest.raises(ShiraError, match="no adapter named 'nope'.*held: bold, grain, ink, pastel"):
        bank.apply({"nope": 1.0})
    with pytest.raises(ShiraError, match="must be finite"):
        bank.apply({"ink": float("nan")})
    with pytest.raises(ShiraError, match="must be a number"):
        bank.apply({"ink": "strong"})
    assert bank.active == {"pastel": 1.0}


def test_add_while_a_mix_is_active_keeps_restore_exact():
    unet = make_unet(TINY_SD)
    snapshot = _snapshot(unet)
    bank = StyleBank(unet)
    bank.add(make_adapter(unet, "a", "struct", seed=1))
    bank.apply({"a": 1.0})
    # a new mask overlapping the fused one: its pristine values must come from the base, not the mix
    bank.add(make_adapter(unet, "b", "wm", seed=2, density=0.1))
    assert bank.active == {"a": 1.0}
    bank.apply({"b": 1.0, "a": 0.5})
    bank.restore()
    _assert_bit_identical(unet, snapshot)


def test_remove_unfuses_and_frees_its_group():
    unet = make_unet(TINY_SD)
    snapshot = _snapshot(unet)
    bank, _ = _bank_with_styles(unet, torch.float32)
    bank.apply({"grain": 1.0, "ink": 1.0})
    bank.remove("grain")
    assert bank.active == {"ink": 1.0} and "grain" not in bank
    assert len(bank._groups) == 2
    bank.remove("ink")
    _assert_bit_identical(unet, snapshot)
    with pytest.raises(ShiraError, match="already in the bank"):
        bank.add(make_adapter(unet, "pastel"))


def test_adapter_round_trips_through_the_bank(tmp_path):
    unet = make_unet(TINY_SD)
    bank, adapters = _bank_with_styles(unet, torch.float16)
    for name, original in adapters.items():
        back = bank.adapter(name)
        assert back.trigger == original.trigger and back.mask == original.mask
        for tensor in original.shapes:
            assert torch.equal(back.indices[tensor], original.indices[tensor])
            assert torch.equal(back.values[tensor], original.values[tensor])
    path = tmp_path / "ink.safetensors"
    bank.adapter("ink").save(path)
    other = StyleBank(make_unet(TINY_SD))
    assert other.load(path) == "ink"
    info = other.info("ink")
    assert info["trigger"] == "ink-style" and info["params"] == adapters["ink"].num_params
    assert info["density"] == pytest.approx(adapters["ink"].density) and info["active_weight"] == 0.0


def test_use_holds_the_lock_so_generations_never_see_half_a_mix():
    unet = make_unet(TINY_SD)
    bank, _ = _bank_with_styles(unet, torch.float32)
    inputs = unet_inputs(unet)
    mixes = [{"ink": 1.0}, {"pastel": 1.0, "grain": 0.5}, {"bold": 1.0}, {}]
    expected = []
    for mix in mixes:
        bank.apply(mix)
        expected.append(forward(unet, inputs))
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(25):
            i = rng.randrange(len(mixes))
            with bank.use(mixes[i]):
                out = forward(unet, inputs)
            if not torch.equal(out, expected[i]):
                errors.append(i)

    def switcher():
        rng = random.Random(99)
        for _ in range(200):
            bank.apply(mixes[rng.randrange(len(mixes))])

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)] + [threading.Thread(target=switcher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_apply_waits_for_a_running_generation():
    unet = make_unet(TINY_SD)
    bank, _ = _bank_with_styles(unet, torch.float32)
    started, finished = threading.Event(), threading.Event()
    order = []

    def generation():
        with bank.use({"ink": 1.0}):
            started.set()
            finished.wait(timeout=0.3)
            order.append(("generation done", dict(bank.active)))

    thread = threading.Thread(target=generation)
    thread.start()
    started.wait()
    bank.apply({"pastel": 1.0})
    order.append(("switched", dict(bank.active)))
    thread.join()
    assert order == [("generation done", {"ink": 1.0}), ("switched", {"pastel": 1.0})]


def test_moving_the_unet_after_adding_is_reported():
    unet = make_unet(TINY_SD)
    bank, _ = _bank_with_styles(unet, torch.float32)
    bank.apply({"ink": 1.0})
    bank.restore()
    unet.to(torch.float16)  # new storage and dtype: the bank's saved values no longer fit
    with pytest.raises(ShiraError, match="moved from cpu/torch.float32 to cpu/torch.float16"):
        bank.apply({"ink": 1.0})


def test_bank_needs_a_diffusers_unet():
    with pytest.raises(ShiraError, match="UNet2DConditionModel"):
        StyleBank(torch.nn.Linear(2, 2))


def test_a_mix_that_overflows_is_refused_and_the_previous_mix_stays():
    unet = make_unet(TINY_SD, dtype=torch.float16)
    pristine = _snapshot(unet)
    bank, _ = _bank_with_styles(unet, torch.float16)
    bank.apply({"ink": 1.0})
    fused = _snapshot(unet)
    with pytest.raises(ShiraError, match="ink=1e\\+06.*non-finite.*float16"):
        bank.apply({"ink": 1e6})  # one group: refused before anything is written
    assert bank.active == {"ink": 1.0}
    _assert_bit_identical(unet, fused)
    with pytest.raises(ShiraError, match="non-finite"):
        bank.apply({"ink": 1.0, "grain": 1e6})  # several groups: written group by group
    assert bank.active == {}  # what the weights are: the base's
    _assert_bit_identical(unet, pristine)
    assert all(torch.isfinite(v).all() for v in unet.state_dict().values())


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_active_describes_the_weights_after_a_failed_apply(monkeypatch, error):
    from shira_diffusion.core import bank as bank_module

    unet = make_unet(TINY_SD)
    pristine = _snapshot(unet)
    bank, _ = _bank_with_styles(unet, torch.float32)
    bank.apply({"ink": 1.0, "grain": 0.5})
    real_write, calls = bank_module._MaskGroup.write, []

    def write_then_fail(group, weights, flat):
        calls.append(group)
        real_write(group, weights, flat)
        if len(calls) == 3:  # midway through a mix across groups: some groups written, some not
            raise error

    monkeypatch.setattr(bank_module._MaskGroup, "write", write_then_fail)
    with pytest.raises(type(error)):
        bank.apply({"pastel": 1.0, "bold": 1.0})
    monkeypatch.setattr(bank_module._MaskGroup, "write", real_write)
    assert bank.active == {}
    _assert_bit_identical(unet, pristine)
    bank.apply({"bold": 1.0})  # and the bank works on
    assert bank.active == {"bold": 1.0}
    bank.restore()
    _assert_bit_identical(unet, pristine)


def test_styles_on_disjoint_slots_mix_exactly_and_leave_each_other_untouched():
    """Slot masks share no entry: a mix is each group written from its own pristine values, in any
    order; adding then removing a style gives the other alone, bit for bit; weights may be negative
    or above 1."""
    unet = make_unet()
    pristine = {k: v.clone() for k, v in unet.state_dict().items()}
    adapters = {f"s{k}": make_adapter(unet, name=f"s{k}", seed=k, slot=k) for k in range(4)}
    bank = StyleBank(unet)
    for adapter in adapters.values():
        bank.add(adapter)
    assert bank._disjoint([bank._entries[n].group for n in adapters])
    bank.apply({"s0": 1.0})
    alone = {k: v.clone() for k, v in unet.state_dict().items()}
    for mix in ({"s0": 1.0, "s1": 0.7}, {"s0": 1.0, "s1": -0.5, "s2": 1.8, "s3": 0.3}, {"s1": 2.5, "s3": -1.0}):
        bank.apply(mix)
        expected = dense_reference(pristine, mix, adapters)
        for name, weight in expected.items():
            torch.testing.assert_close(unet.state_dict()[name], weight, rtol=0, atol=1e-6)
    bank.apply({"s0": 1.0, "s2": 1.0})
    bank.apply({"s0": 1.0})  # s2 removed: s0 alone, bit for bit
    assert all(torch.equal(unet.state_dict()[k], alone[k]) for k in alone)
    bank.restore()
    assert all(torch.equal(unet.state_dict()[k], pristine[k]) for k in pristine)


def test_a_group_that_stays_is_rewritten_when_an_overlapping_group_leaves():
    unet = make_unet()
    pristine = {k: v.clone() for k, v in unet.state_dict().items()}
    shared, other = make_adapter(unet, name="a", seed=1), make_adapter(unet, name="b", seed=2, mask="rand")
    slot = make_adapter(unet, name="c", seed=3, slot=0)
    bank = StyleBank(unet)
    for adapter in (shared, other, slot):
        bank.add(adapter)
    bank.apply({"a": 1.0, "b": 1.0})  # overlapping groups: the additive path
    bank.apply({"a": 1.0})  # b leaves; a stays but shares entries with b: written again
    expected = dense_reference(pristine, {"a": 1.0}, {"a": shared})
    for name, weight in expected.items():
        torch.testing.assert_close(unet.state_dict()[name], weight, rtol=0, atol=1e-6)
