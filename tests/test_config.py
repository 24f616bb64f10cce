"""RunConfig: coercion of papermill/CLI values and clear errors for bad ones."""
import pytest

from nslab.config import RunConfig
from nslab.presets import PRESETS, preset


@pytest.mark.parametrize("field, value, message", [
    ("model", "vgg", "model='vgg' is not allowed: choose one of"),
    ("method", "l2", "method='l2' is not allowed"),
    ("targets", "last", "targets='last' is not allowed"),
    ("power_precision", "fp16", "power_precision='fp16' is not allowed: choose one of"),
    ("depth", 0, "depth=0 is not allowed: must be > 0"),
    ("width", -3, "width=-3 is not allowed"),
    ("epochs", 0, "epochs=0"),
    ("batch_size", 0, "batch_size=0"),
    ("lr", 0.0, "lr=0.0 is not allowed"),
    ("lr", -1e-3, "lr=-0.001"),
    ("width", "abc", "width='abc' is not allowed: expected an integer"),
    ("lr", "fast", "lr='fast' is not allowed: expected a number"),
    ("warm_start", "maybe", "warm_start='maybe' is not allowed: expected true or false"),
    ("train_subset", -1, "train_subset=-1"),
    ("milestones", "120,60", "milestones=(120, 60) is not allowed"),
    ("name", "a/b", "name='a/b' is not allowed"),
    ("name", "run\tone", "control characters"),
    ("out_dir", "out\nput", "control characters"),
    ("gamma", float("inf"), "gamma=inf is not allowed: must be a finite number"),
    ("rank_rtol", float("nan"), "rank_rtol=nan is not allowed: must be a finite number"),
    ("power_tol", "nan", "power_tol=nan is not allowed: must be a finite number"),
    ("weight_decay", -0.1, "weight_decay=-0.1 is not allowed: must be >= 0"),
    ("seed", 2**63, "seed=9223372036854775808 is not allowed: must be at most"),
    ("depth", 5000, "depth=5000 is not allowed: must be at most 1024"),
    ("scale_rule", "most", "scale_rule='most' is not allowed"),
])
def test_bad_values_name_the_field_value_and_what_is_allowed(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**{field: value})


def test_settings_that_need_cuda_or_a_capturable_step():
    with pytest.raises(ValueError, match="cuda_graph=True is not allowed with device='cpu'"):
        RunConfig(cuda_graph=True, device="cpu")
    with pytest.raises(ValueError, match="capture needs warm_start=True and power_tol=0"):
        RunConfig(cuda_graph=True, method="spectral", warm_start=False)
    with pytest.raises(ValueError, match="capture needs warm_start=True and power_tol=0"):
        RunConfig(cuda_graph=True, method="spectral", power_tol=1e-4)
    assert RunConfig(cuda_graph=True, method="spectral", device="cuda").cuda_graph
    with pytest.raises(ValueError, match="method='spectral_topk' is not allowed with warm_start=False"):
        RunConfig(method="spectral_topk", warm_start=False)
    with pytest.raises(ValueError, match="method='orthogonal': its step waits for the host"):
        RunConfig(cuda_graph=True, method="orthogonal")
    with pytest.raises(ValueError, match="method='spectral_norm_param': its step lives in the forward pass"):
        RunConfig(cuda_graph=True, method="spectral_norm_param")


def test_every_method_is_a_choice_everywhere():
    """One class in nslab.methods is one choice of RunConfig, the command line and the notebook."""
    from dataclasses import fields

    from nslab.config import METHODS
    from nslab.methods import METHODS as REGISTRY
    from nslab.notebook import parameters_source

    assert METHODS == tuple(REGISTRY) and len(METHODS) == 8
    help_line = next(line for line in parameters_source().splitlines() if line.startswith("method:"))
    assert "nslab.methods.METHODS" in help_line  # names the registry: a new method needs no new notebook
    for m in METHODS:
        assert RunConfig(method=m).method == m
    assert {f.name for f in fields(RunConfig)} >= {"weight_decay"}


def test_a_name_longer_than_a_folder_name_is_refused_also_when_derived():
    RunConfig(name="x" * 255)
    with pytest.raises(ValueError, match="at most 255 bytes, this one 256"):
        RunConfig(name="x" * 256)
    with pytest.raises(ValueError, match="at most 255 bytes"):
        RunConfig(name="é" * 128)  # 256 bytes in UTF-8


def test_papermill_style_values_are_coerced():
    c = RunConfig(lr=1, width="256", warm_start="false", milestones="30,60", power_tol=0)
    assert (c.lr, c.width, c.warm_start, c.milestones, c.power_tol) == (1.0, 256, False, (30, 60), 0.0)
    assert isinstance(c.lr, float) and isinstance(c.width, int)
    assert RunConfig(milestones=[10, 20]).milestones == (10, 20)


def test_unknown_parameter_is_rejected_by_name():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['widht'\]"):
        RunConfig.from_dict({"widht": 3})


def test_run_name_and_data_dir(monkeypatch):
    assert RunConfig(depth=3, width=256, method="spectral").run_name == "mlp3x256-spectral-s1"
    assert RunConfig(model="resnet34", seed=2).run_name == "resnet34-none-s2"
    assert RunConfig(name="mine").run_name == "mine"
    assert RunConfig().resolved_data_dir == "data"
    monkeypatch.setenv("NSLAB_DATA_DIR", "/somewhere")
    assert RunConfig().resolved_data_dir == "/somewhere"
    assert RunConfig(data_dir="/here").resolved_data_dir == "/here"


def test_presets_cover_the_blog_grid_with_seed_settings():
    paper = [n for n in PRESETS if n != "quick"]
    assert len(paper) == 12
    c = preset("mlp5x2000-spectral")
    assert (c.depth, c.width, c.method, c.targets, c.power_iters, c.warm_start, c.augment_test) == \
        (5, 2000, "spectral", "first_layer", 500, False, True)
    assert preset("resnet50-frobenius", epochs=2).epochs == 2
    with pytest.raises(ValueError, match="preset='nope' is not allowed"):
        preset("nope")


def test_a_run_folder_from_before_a_field_existed_resumes_with_what_it_did():
    """config.json written before power_precision existed: the run used float32 products; it resumes
    with power_precision='float32' and is refused, by name, under the new default 'auto'."""
    from nslab.config import settings_differences

    old = RunConfig(depth=2, width=16, power_precision="float32").to_dict()
    del old["power_precision"]
    assert settings_differences(old, RunConfig(depth=2, width=16, power_precision="float32")) == []
    assert settings_differences(old, RunConfig(depth=2, width=16)) == ["power_precision: 'float32' there, 'auto' here"]
