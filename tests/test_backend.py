"Chapter 00: run profiles, the runtime summary and the attention cost model."
import pytest

import gcvit_nb
from gcvit_nb import backend
from gcvit_nb.backend import PROFILES, Profile, active_profile, detect_profile, has_accelerator, runtime_summary
from gcvit_nb.complexity import global_attention_flops, window_attention_flops


@pytest.fixture
def plain_profile():
    "What detect_profile returns with neither GCVIT_PROFILE nor GCVIT_SMOKE set on this machine."
    return "gpu" if has_accelerator() else "cpu"


def test_profiles_are_the_three_documented_ones():
    assert set(PROFILES) == {"smoke", "cpu", "gpu"}


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "TRUE", " 1 "])
def test_smoke_flag_on(value):
    assert detect_profile({"GCVIT_SMOKE": value}) == "smoke"


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "OFF", " 0 "])
def test_smoke_flag_off(value, plain_profile):
    assert detect_profile({"GCVIT_SMOKE": value}) == plain_profile


def test_no_variables_gives_cpu_or_gpu(plain_profile):
    assert plain_profile in ("cpu", "gpu")
    assert detect_profile({}) == plain_profile


@pytest.mark.parametrize("forced", ["smoke", "cpu", "gpu"])
def test_profile_variable_forces(forced):
    # GCVIT_PROFILE wins over GCVIT_SMOKE in both directions
    assert detect_profile({"GCVIT_PROFILE": forced, "GCVIT_SMOKE": "1"}) == forced
    assert detect_profile({"GCVIT_PROFILE": forced, "GCVIT_SMOKE": "0"}) == forced


def test_profile_variable_is_case_and_space_insensitive():
    assert detect_profile({"GCVIT_PROFILE": " GPU "}) == "gpu"
    assert detect_profile({"GCVIT_PROFILE": "Smoke"}) == "smoke"


@pytest.mark.parametrize("bad", ["fast", "tpu", "smoke2", "1"])
def test_invalid_profile_variable_raises(bad):
    with pytest.raises(ValueError) as err:
        detect_profile({"GCVIT_PROFILE": bad})
    msg = str(err.value)
    assert bad.lower() in msg
    for name in PROFILES:
        assert name in msg


def test_detect_profile_reads_os_environ(monkeypatch, plain_profile):
    monkeypatch.delenv("GCVIT_PROFILE", raising=False)
    monkeypatch.setenv("GCVIT_SMOKE", "1")
    assert detect_profile() == "smoke"
    assert active_profile() == Profile("smoke")
    monkeypatch.setenv("GCVIT_SMOKE", "0")
    assert detect_profile() == plain_profile
    monkeypatch.setenv("GCVIT_PROFILE", "cpu")
    monkeypatch.setenv("GCVIT_SMOKE", "1")
    assert active_profile().name == "cpu"
    monkeypatch.setenv("GCVIT_PROFILE", "nonsense")
    with pytest.raises(ValueError):
        active_profile()


def test_active_profile_with_explicit_environ():
    assert active_profile({"GCVIT_PROFILE": "gpu"}).name == "gpu"
    assert isinstance(active_profile({"GCVIT_SMOKE": "1"}), Profile)


def test_profile_pick():
    for name, expected in [("smoke", 1), ("cpu", 3), ("gpu", 5)]:
        assert Profile(name).pick(smoke=1, cpu=3, gpu=5) == expected
    # values of any type, positional too
    assert Profile("cpu").pick("a", ["b"], None) == ["b"]
    assert Profile("gpu").pick(0, 0, {"k": 2}) == {"k": 2}


def test_profile_rejects_unknown_name():
    with pytest.raises(ValueError, match="smoke"):
        Profile("turbo")


def test_profile_is_immutable():
    p = Profile("cpu")
    with pytest.raises(Exception):
        p.name = "gpu"


def test_global_attention_flops_small_case():
    # N=4 tokens, C=2: q, k, v, out projections 4·(4·2·2)=64; scores 4·4·2=32; mix 4·4·2=32 -> 128
    assert global_attention_flops(4, 2) == 128
    # N=1, C=1: 4 projections of one scalar + one score + one mix = 6
    assert global_attention_flops(1, 1) == 6


def test_window_attention_flops_small_case():
    # N=8, C=2, 2×2 windows: projections 4·8·4=128; each token scores and mixes 4 keys of width 2: 2·8·4·2=128
    assert window_attention_flops(8, 2, 2) == 256


def test_window_attention_is_global_attention_when_the_window_is_the_image():
    for side, dim in [(7, 64), (14, 96), (3, 8)]:
        n = side * side
        assert window_attention_flops(n, dim, side) == global_attention_flops(n, dim)


def test_cost_growth_quadratic_vs_linear():
    dim, window = 64, 7
    for n in (49 * 16, 49 * 64, 3136):
        # window attention is linear in the token count ...
        assert window_attention_flops(2 * n, dim, window) == 2 * window_attention_flops(n, dim, window)
        # ... global attention is not: doubling N adds 2·(2N)²·C - 2·2·N²·C = 4N²C on top of doubling
        assert global_attention_flops(2 * n, dim) - 2 * global_attention_flops(n, dim) == 4 * n * n * dim
        assert window_attention_flops(n, dim, window) < global_attention_flops(n, dim)


def test_cost_functions_return_ints():
    assert isinstance(global_attention_flops(3136, 64), int)
    assert isinstance(window_attention_flops(3136, 64, 7), int)


def test_runtime_summary_names_backend_and_profile():
    import keras
    backend = keras.backend.backend()
    line = runtime_summary(Profile("smoke"))
    assert f"backend {backend} " in line
    assert f"keras {keras.__version__}" in line
    assert gcvit_nb.__version__ in line
    assert line.rstrip().endswith("profile smoke")
    assert "\n" not in line
    module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    assert module.__version__ in line


def test_runtime_summary_defaults_to_active_profile(monkeypatch):
    monkeypatch.setenv("GCVIT_PROFILE", "gpu")
    assert runtime_summary().endswith("profile gpu")


def test_package_exports_profile_helpers():
    assert gcvit_nb.Profile is backend.Profile
    assert gcvit_nb.active_profile is backend.active_profile
    assert gcvit_nb.runtime_summary is backend.runtime_summary
