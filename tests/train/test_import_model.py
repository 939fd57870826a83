"""Bring your own: a user's classifier (class + state dict, or exported program), SRAM table and target."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nfedge.analysis.energy import EnergyConfig, estimate_energy
from nfedge.errors import NfedgeError
from nfedge.progress import QUIET
from nfedge.quant import quantizable_weight_names
from nfedge.train.checkpoint import load_checkpoint
from nfedge.train.import_model import ImportModelConfig, import_model

USER_NET = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """A user's classifier: Conv-BN-ReLU, max-pool, Conv-BN-ReLU, global average pool, Linear."""

        def __init__(self, in_channels=1, num_classes=10, width=8):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.head(self.body(x))
''')


def nfedge(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nfedge", *map(str, args)], capture_output=True, text=True, env=env)


def assert_one_line_error(r, match):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("nfedge: error:") and match in lines[0], r.stderr


@pytest.fixture
def user(tmp_path):
    """The user's files: tinynet.py, its trained weights (non-trivial BN statistics) and the module itself."""
    src = tmp_path / "user" / "tinynet.py"
    src.parent.mkdir()
    src.write_text(USER_NET)
    ns: dict = {}
    exec(compile(USER_NET, str(src), "exec"), ns)
    torch.manual_seed(0)
    model = ns["TinyNet"](width=6)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    torch.save(model.state_dict(), src.parent / "tinynet.pt")
    return src, src.parent / "tinynet.pt", model


def _export(model, path, dynamic=True, batch=2):
    x = torch.zeros(batch, 1, 32, 32)
    dyn = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dyn), path)
    return path


def _x():
    return torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def _quantize(checkpoint: Path, out: Path) -> Path:
    """`nfedge quantize` in-process (the CLI's own code path), to spare a subprocess."""
    from nfedge.fileio import sha256_file
    from nfedge.sram.image import QuantizeConfig, quantize_to_image, write_image

    write_image(quantize_to_image(load_checkpoint(checkpoint)[0], QuantizeConfig(bits=8), sha256_file(checkpoint)), out)
    return out


# ------------------------------------------------------------------------------------ the two sources


def test_class_and_state_dict_give_the_users_logits(tmp_path, user):
    src, sd, model = user
    path = import_model(ImportModelConfig(model_class=f"{src}:TinyNet", kwargs={"width": 6}, state_dict=str(sd)),
                        tmp_path / "imp", QUIET)
    loaded, ckpt = load_checkpoint(path)
    assert type(loaded).__name__ == "TinyNet" and not loaded.training
    assert torch.equal(loaded(_x()), model(_x()))
    assert ckpt["model"] == "TinyNet" and ckpt["source"]["class"] == f"{src.resolve()}:TinyNet"
    assert ckpt["meta"]["dataset"] == {"channels": 1, "image_size": [32, 32], "num_classes": 10}
    assert json.loads((tmp_path / "imp" / "config.json").read_text())["kwargs"] == {"width": 6}


def test_importable_package_class(tmp_path, user, monkeypatch):
    _, sd, model = user
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = import_model(ImportModelConfig(model_class="userpkg.nets:TinyNet", kwargs={"width": 6}, state_dict=str(sd),
                                          name="my-net"), tmp_path / "imp", QUIET)
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["model"] == "my-net" and torch.equal(loaded(_x()), model(_x()))


def test_exported_program_gives_the_users_logits(tmp_path, user):
    src, sd, model = user
    pt2 = _export(model, tmp_path / "tiny.pt2")
    path = import_model(ImportModelConfig(exported_program=str(pt2)), tmp_path / "imp", QUIET)
    pt2.unlink()  # the checkpoint embeds the program: it needs no file beside it
    loaded, ckpt = load_checkpoint(path)
    assert torch.allclose(loaded(_x()), model(_x()), atol=1e-6)
    assert ckpt["model"] == "tiny" and "program" not in ckpt["source"] and len(ckpt["source"]["sha256"]) == 64
    # the graph's conv/linear weights are found like the module's, so the memory image is the same
    assert quantizable_weight_names(loaded) == quantizable_weight_names(model) == \
        ["body.0.weight", "body.4.weight", "head.weight"]
    loaded.train()  # torch's exported modules refuse train()/eval(); nfedge's stay in inference behaviour
    assert torch.allclose(loaded(_x()), model(_x()), atol=1e-6)


def test_energy_of_exported_graph_equals_the_modules(tmp_path, user):
    """Layer geometry read from the exported graph's aten ops gives the same MACs and weight accesses."""
    src, sd, model = user
    a = import_model(ImportModelConfig(model_class=f"{src}:TinyNet", kwargs={"width": 6}, state_dict=str(sd)),
                     tmp_path / "a", QUIET)
    b = import_model(ImportModelConfig(exported_program=str(_export(model, tmp_path / "t.pt2"))), tmp_path / "b", QUIET)
    ea, eb = (estimate_energy(EnergyConfig(base=str(p), generator="ConvT", input="1x32x32")) for p in (a, b))
    for k in ("base_params", "base_macs", "base_weight_accesses", "energy_saving"):
        assert ea[k] == eb[k] and ea[k] != 0, k
    assert ea["base"] == "TinyNet" and eb["base"] == "t"


# ------------------------------------------------------------------------------- errors leave nothing


@pytest.mark.parametrize("kind, match", [
    ("no-module", "cannot import module 'no_such_pkg_xyz.nets'"),
    ("no-class", "has no attribute 'Nope'"),
    ("not-a-module", "is not a torch.nn.Module subclass"),
    ("bad-kwargs", "TinyNet(**{'depth': 3}) failed: TypeError"),
    ("wrong-keys", "does not fit TinyNet: keys missing head.bias"),
    ("wrong-shape", "size mismatch for body.0.weight"),
    ("wrong-classes", "output is (1, 10) for one 1x32x32 image, expected (1, 7) logits"),
    ("wrong-input", "does not run on a 3x32x32 image"),
    ("static-batch", "does not run on a batch of 2"),
    ("train-mode", "depend on the rest of the batch"),
    ("not-a-state-dict", "cannot be read with weights_only=True"),
])
def test_bad_imports_are_one_line_errors_and_write_nothing(tmp_path, user, kind, match):
    src, sd, model = user
    cls = f"{src}:TinyNet"
    kw = {"width": 6}
    cfg = {"model_class": cls, "kwargs": kw, "state_dict": str(sd)}
    if kind == "no-module":
        cfg["model_class"] = "no_such_pkg_xyz.nets:TinyNet"
    elif kind == "no-class":
        cfg["model_class"] = f"{src}:Nope"
    elif kind == "not-a-module":
        cfg["model_class"] = f"{src}:torch"
    elif kind == "bad-kwargs":
        cfg["kwargs"] = {"depth": 3}
    elif kind == "wrong-keys":
        state = torch.load(sd, weights_only=True)
        del state["head.bias"]
        torch.save(state, tmp_path / "bad.pt")
        cfg["state_dict"] = str(tmp_path / "bad.pt")
    elif kind == "wrong-shape":
        cfg["kwargs"] = {"width": 4}
    elif kind == "wrong-classes":
        cfg["classes"] = 7
    elif kind == "wrong-input":
        cfg["input"] = (3, 32, 32)
    elif kind == "static-batch":
        cfg = {"exported_program": str(_export(model, tmp_path / "s.pt2", dynamic=False, batch=1))}
    elif kind == "train-mode":
        cfg = {"exported_program": str(_export(model.train(), tmp_path / "t.pt2"))}
    elif kind == "not-a-state-dict":
        torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")  # a module object, not a state dict
        cfg["state_dict"] = str(tmp_path / "whole.pt")
    out = tmp_path / "out"
    with pytest.raises(NfedgeError) as e:
        import_model(ImportModelConfig(**cfg), out, QUIET)
    assert match in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("cfg, match", [
    ({}, "give a model class"),
    ({"model_class": "a:B", "exported_program": "m.pt2"}, "not both"),
    ({"model_class": "nocolon"}, "package.module:ClassName"),
    ({"model_class": "a:B"}, "needs its state dict"),
    ({"exported_program": "m.pt2", "kwargs": {"w": 1}}, "no state dict or kwargs"),
    ({"model_class": "a:B", "state_dict": "s.pt", "classes": 1}, "classes must be"),
])
def test_config_validation(cfg, match):
    with pytest.raises(NfedgeError, match=match):
        ImportModelConfig(**cfg)


def test_changed_class_file_is_detected_on_load(tmp_path, user):
    src, sd, _ = user
    path = import_model(ImportModelConfig(model_class=f"{src}:TinyNet", kwargs={"width": 6}, state_dict=str(sd)),
                        tmp_path / "imp", QUIET)
    src.write_text(USER_NET.replace("return self.head(self.body(x))", "return 2 * self.head(self.body(x))"))
    with pytest.raises(NfedgeError, match="tinynet.py changed since the model was imported"):
        load_checkpoint(path)


def test_dataset_mismatch_and_accuracy(tmp_path, user):
    src, sd, _ = user
    from nfedge.data import DataConfig

    base = {"model_class": f"{src}:TinyNet", "kwargs": {"width": 6}, "state_dict": str(sd)}
    p = import_model(ImportModelConfig(**base, data=DataConfig(test_limit=40)), tmp_path / "ok", QUIET)
    meta = load_checkpoint(p)[1]["meta"]
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["dataset"]["num_test"] == 40
    with pytest.raises(NfedgeError, match="has 1x32x32 images and 10 classes; the model was declared 1x32x32 with 7"):
        import_model(ImportModelConfig(**base, classes=7, data=DataConfig(test_limit=40)), tmp_path / "bad", QUIET)


# ----------------------------------------------------------------------------- the CLI, end to end


def test_cli_error_is_one_line(tmp_path, user):
    src, sd, _ = user
    out = tmp_path / "out"
    r = nfedge("import-model", "--class", f"{src}:TinyNet", "--state-dict", sd, "--out", out)  # width 8 != 6
    assert_one_line_error(r, "size mismatch")
    assert not out.exists()
    assert_one_line_error(nfedge("import-model", "--class", f"{src}:TinyNet", "--kwargs", "{width: 6}", "--state-dict",
                                 sd, "--out", out), "--kwargs is not valid JSON")


@pytest.mark.slow
def test_imported_model_through_quantize_evaluate_build(tmp_path, user):
    """The downstream commands take the imported checkpoint unchanged. An exported program here (the class path
    is built for the M55 in the emulator test); the host target needs no cross toolchain."""
    src, sd, model = user
    d = tmp_path
    from nfedge.data import DataConfig

    import_model(ImportModelConfig(exported_program=str(_export(model, d / "tiny.pt2")), data=DataConfig(test_limit=50)),
                 d / "imp", QUIET)
    _quantize(d / "imp" / "base.pt", d / "img")
    r = nfedge("evaluate", "--base", d / "imp" / "base.pt", "--image", d / "img", "--voltage", 0.833, "--chips", 2,
               "--test-limit", 50, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["samples"] == 50 and len(res["conditions"][0]["PA"]["per_chip"]) == 2
    r = nfedge("build", "--target", "host", "--bits", 8, "--base", d / "imp" / "base.pt", "--image", d / "img",
               "--out", d / "bundle")
    assert r.returncode == 0, r.stderr[-2000:]
    from nfedge.deploy.bundle import load_bundle
    from nfedge.deploy.run.harness import run_on_target
    from nfedge.sram.image import read_image

    bundle = load_bundle(d / "bundle")
    x = _x()[:2]
    res = run_on_target(bundle, read_image(d / "img").codes.tobytes(), x.numpy(), trust_bundle_code=True)  # built here
    host = load_checkpoint(d / "imp" / "base.pt")[0]
    from nfedge.deploy.compile.export import ImageWeightedModel, image_tensor

    expect = ImageWeightedModel(host, read_image(d / "img").manifest)(x, image_tensor(read_image(d / "img")))
    assert torch.allclose(torch.from_numpy(res.logits_base), expect, atol=1e-4)


# ------------------------------------------------------------------------------- own SRAM table


def user_table(tmp_path: Path, ber_0833: float = 0.03) -> Path:
    """The built-in 14 nm table with another BER at 0.833 V/Vmin (still falling with voltage)."""
    p = tmp_path / "my-sram.toml"
    p.write_text(textwrap.dedent(f'''
        format = "nfedge-sram-calibration"
        version = 1
        name = "my-sram"
        source = "test: a made-up chip"
        voltage           = [0.750,  0.792,   0.833,       0.875,   0.917,     0.958,      1.000]
        ber               = [0.2056, 0.05573, {ber_0833}, 0.00129, 0.0000687, 0.00000191, 0.0]
        energy_per_access = [0.5625, 0.6267,  0.6944,      0.7656,  0.8403,    0.9184,     1.0]
    '''))
    return p


def test_user_table_changes_the_ber_every_stage_uses(tmp_path, small_model):
    from nfedge.analysis.evaluate import EvaluateConfig
    from nfedge.deploy.run.faultrun import FaultrunConfig
    from nfedge.sram.faults import InjectConfig, inject_faults
    from nfedge.sram.image import build_image
    from nfedge.train.eopm import EOPMConfig

    table = str(user_table(tmp_path))
    image = build_image(small_model, 8)
    _, builtin = inject_faults(image, InjectConfig(voltage=0.833, chip=0))
    _, mine = inject_faults(image, InjectConfig(voltage=0.833, chip=0, calibration=table))
    assert builtin.ber == 0.01115 and mine.ber == 0.03
    assert mine.faulty_cells > 2 * builtin.faulty_cells  # 49k stored bits: ~550 vs ~1480 faulty cells
    assert EOPMConfig(ber=None, voltage=0.833, calibration=table).inject_config(0).resolved_ber() == 0.03
    assert EvaluateConfig(voltages=(0.833,), calibration=table).conditions()[0]["ber"] == 0.03
    assert FaultrunConfig(voltages=(0.833,), calibration=table).conditions()[0]["ber"] == 0.03
    assert estimate_energy(EnergyConfig(base="cnn-xs", voltage=None, ber=0.03, calibration=table))["voltage"] == pytest.approx(0.833)


def test_user_table_from_the_cli(tmp_path, checkpoint):
    table = user_table(tmp_path)
    _quantize(checkpoint, tmp_path / "img")
    r = nfedge("inject", "--image", tmp_path / "img", "--voltage", 0.833, "--chip", 0, "--calibration", table,
               "--out", tmp_path / "chip0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ber"] == 0.03
    r = nfedge("evaluate", "--base", checkpoint, "--image", tmp_path / "img", "--voltage", 0.833, "--chips", 1,
               "--test-limit", 20, "--calibration", table, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["conditions"][0]["ber"] == 0.03 and res["config"]["calibration"] == str(table)
    bad = tmp_path / "bad.toml"
    bad.write_text(table.read_text().replace('source = "test: a made-up chip"\n', ""))
    r = nfedge("inject", "--image", tmp_path / "img", "--voltage", 0.833, "--chip", 0, "--calibration", bad,
               "--out", tmp_path / "chip0b")
    assert_one_line_error(r, f"calibration {bad}: missing or bad field (KeyError: 'source')")
    assert not (tmp_path / "chip0b").exists()


# ------------------------------------------------------------------------------ own target descriptor


def user_target(tmp_path: Path, ram: int, image: int = 0x10000, name: str = "my-board") -> Path:
    """The Cortex-M55 descriptor under another name, with `ram` bytes of RAM and `image` bytes of image region."""
    from nfedge.deploy.targets import load_target

    text = Path(load_target("cortex-m55").source).read_text()
    for old, new in (('name = "cortex-m55"', f'name = "{name}"'),
                     ('length = 0x200000 }\n# the weight', f'length = {ram:#x} }}\n# the weight'),
                     ('origin = 0x31200000, length = 0x200000', f'origin = 0x31200000, length = {image:#x}')):
        assert old in text
        text = text.replace(old, new)
    p = tmp_path / f"{name}-{ram:x}.toml"
    p.write_text(text)
    return p


def test_user_target_loads_with_its_limits(tmp_path):
    from nfedge.deploy.targets import load_target

    t = load_target(str(user_target(tmp_path, ram=0x40000, image=0x4000)))
    assert t.name == "my-board" and t.ram.length == 0x40000 and t.image.length == 0x4000
    assert t.source.endswith("my-board-40000.toml") and t.emulator.machine == "mps3-an547"


@pytest.mark.parametrize("old, new, match", [
    ("clock_hz = 32_000_000", 'clock_hz = "fast"', "timing.clock_hz must be a int, got str"),
    ('ram = { name = "ISRAM0", origin = 0x31000000, length = 0x200000 }', "", "memory.ram table is missing"),
    ('timer = "systick"', 'timer = "sundial"', "timing.timer 'sundial' is not one of"),
])
def test_malformed_user_target_is_one_line_naming_file_and_field(tmp_path, checkpoint, old, new, match):
    from nfedge.deploy.targets import load_target

    p = tmp_path / "mine.toml"
    p.write_text(Path(load_target("cortex-m55").source).read_text().replace(old, new))
    with pytest.raises(NfedgeError, match=f"target descriptor {p}: {match}"):
        load_target(str(p))


def test_image_larger_than_the_user_targets_region(tmp_path, checkpoint):
    _quantize(checkpoint, tmp_path / "img")
    r = nfedge("build", "--target", user_target(tmp_path, ram=0x80000, image=0x800), "--mode", "weight-only",
               "--base", checkpoint, "--image", tmp_path / "img", "--out", tmp_path / "b")
    assert_one_line_error(r, "does not fit target my-board: the weight image is 6152 bytes but its image region "
                             "ISRAM1 holds 2048 bytes")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.emulator
def test_own_model_table_and_target_on_the_emulator(tmp_path, user):
    """All three brought together: the user's class on the user's board, faults from the user's table."""
    src, sd, _ = user
    d = tmp_path
    r = nfedge("import-model", "--class", f"{src}:TinyNet", "--kwargs", '{"width": 6}', "--state-dict", sd,
               "--dataset", "fashion-mnist", "--test-limit", 20, "--out", d / "imp")
    assert r.returncode == 0, r.stderr
    _quantize(d / "imp" / "base.pt", d / "img")
    # (a RAM region too small for the model fails at link time: tests/deploy/test_build.py checks that case)
    r = nfedge("build", "--target", user_target(d, ram=0x80000), "--base", d / "imp" / "base.pt", "--image", d / "img",
               "--out", d / "bundle")
    assert r.returncode == 0, r.stderr[-2000:]
    r = nfedge("faultrun", "--bundle", d / "bundle", "--voltage", 0.833, "--chips", 1, "--samples", 3,
               "--calibration", user_table(d), "--json")
    # a bundle of an imported class holds a checkpoint that imports the user's code: refused unless trusted
    assert r.returncode == 1 and "--trust-bundle-code" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = nfedge("faultrun", "--bundle", d / "bundle", "--voltage", 0.833, "--chips", 1, "--samples", 3,
               "--calibration", user_table(d), "--json", "--trust-bundle-code")  # we built it
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["target"] == "my-board" and res["ber"] == [0.03] and res["agreement"]["passed"]
    assert res["agreement"]["min_identical_fraction"] == 1.0 and res["instructions_per_inference"]["base"] > 10_000


# ------------------------------------------------------------------------------------- nfedge run


def test_run_with_own_checkpoint_and_table(tmp_path, user):
    """`nfedge run` takes the imported model and the user's table from its config; edits to the table re-run
    only the stages it feeds."""
    from nfedge.data import DataConfig
    from nfedge.pipeline import RunConfig, load_run_config, run_pipeline

    src, sd, _ = user
    ckpt = import_model(ImportModelConfig(model_class=f"{src}:TinyNet", kwargs={"width": 6}, state_dict=str(sd)),
                        tmp_path / "imp", QUIET)
    table = tmp_path / "narrow.toml"  # from 0.85 V/Vmin up: the default 0.833 is outside it
    table.write_text('format = "nfedge-sram-calibration"\nversion = 1\nname = "narrow"\nsource = "test"\n'
                     "voltage = [0.85, 0.9, 1.0]\nber = [0.03, 0.001, 0.0]\nenergy_per_access = [0.72, 0.81, 1.0]\n")
    conf = {"base_checkpoint": str(ckpt), "calibration": str(table), "base": {"data": {"train_limit": 64, "test_limit": 40}},
            "generators": ["UIP"], "eopm": {"max_steps": 2, "n_perturbed": 2, "batch_size": 8}, "chips": 2,
            "voltages": [1.0, 0.85], "eval_limit": 40, "target": "none",
            "plan": {"chips": 5, "confirm_chips": 5, "quantile": 0.2, "confidence": 0.6, "test_limit": 40,
                     "curve_step": 0.05, "parity": False, "msb": [], "fewer_bits": [], "generator_msb": 0,
                     "voltages": []}}
    (tmp_path / "run.json").write_text(json.dumps(conf))
    cfg = load_run_config(tmp_path / "run.json")
    r = run_pipeline(cfg, tmp_path / "out", progress=QUIET)
    ran = {s["name"]: s for s in r["stages"]}
    assert not any(s["reused"] for s in r["stages"]) and set(ran) == {"base", "image", "gen-UIP", "plan", "evaluate"}
    ev = json.loads((Path(ran["evaluate"]["path"]) / "evaluate.json").read_text())
    assert [c["ber"] for c in ev["conditions"]] == [0.0, 0.03] and ev["config"]["calibration"] == str(table)
    assert ev["energy"]["UIP"]["base"] == "TinyNet"
    assert "Base model `TinyNet`" in Path(r["report"]).read_text()
    adopted = load_checkpoint(Path(ran["base"]["path"]) / "base.pt")[1]["meta"]
    assert adopted["config"]["data"] == DataConfig(train_limit=64, test_limit=40).to_dict()

    table.write_text(table.read_text().replace("0.03,", "0.04,"))
    again = {s["name"]: s["reused"] for s in run_pipeline(cfg, tmp_path / "out", progress=QUIET)["stages"]}
    assert again == {"base": True, "image": True, "gen-UIP": False, "plan": False, "evaluate": False}
    plan = json.loads((Path(ran["plan"]["path"]) / "plan.json").read_text())
    assert plan["config"]["base"].endswith("base.pt") and plan["voltage_range"] == [0.85, 1.0]  # the user's table
    with pytest.raises(NfedgeError, match="voltage 0.833 is outside calibration 'narrow'"):
        RunConfig(calibration=str(table), voltages=(1.0, 0.833))


NEIGHBOUR = textwrap.dedent('''
    from torch import nn


    def body(width):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
''')
EDGE_NET = textwrap.dedent('''
    from torch import nn

    from edge_blocks_t28 import body


    class EdgeNet(nn.Module):
        def __init__(self, width=4):
            super().__init__()
            self.body, self.head = body(width), nn.Linear(width, 10)

        def forward(self, x):
            return self.head(self.body(x))
''')


def test_a_class_file_imports_its_neighbours_and_every_one_is_hashed(tmp_path):
    """issue 28 item 7: `--class file.py:X` where the file imports a file beside it, as when run as a script."""
    from nfedge.train.model_source import import_class

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "edge_blocks_t28.py").write_text(NEIGHBOUR)
    (proj / "edge_net.py").write_text(EDGE_NET)
    path_before = list(sys.path)
    try:
        model = import_class(f"{proj / 'edge_net.py'}:EdgeNet")(width=4).eval()
        assert sys.path == path_before  # the folder was importable during the import only
        torch.save(model.state_dict(), tmp_path / "w.pt")
        ckpt_path = import_model(ImportModelConfig(model_class=f"{proj / 'edge_net.py'}:EdgeNet", kwargs={"width": 4},
                                                   state_dict=str(tmp_path / "w.pt")), tmp_path / "imp", QUIET)
        loaded, ckpt = load_checkpoint(ckpt_path)
        assert torch.equal(loaded(_x()), model(_x()))
        assert sorted(ckpt["source"]["folder_files"]) == ["edge_blocks_t28.py", "edge_net.py"]
        (proj / "edge_blocks_t28.py").write_text(NEIGHBOUR.replace("nn.ReLU()", "nn.Tanh()"))
        with pytest.raises(NfedgeError, match="edge_blocks_t28.py changed since the model was imported"):
            load_checkpoint(ckpt_path)
        (proj / "edge_blocks_t28.py").unlink()
        with pytest.raises(NfedgeError, match="edge_blocks_t28.py, imported with the model, no longer exists"):
            load_checkpoint(ckpt_path)
    finally:
        sys.modules.pop("edge_blocks_t28", None)
    # a module the folder does not have is still an error, and says where nfedge looked
    (proj / "lonely.py").write_text("import no_such_neighbour_t28\n")
    with pytest.raises(NfedgeError, match=r"No module named 'no_such_neighbour_t28' \(its folder .*proj is importable"):
        import_class(f"{proj / 'lonely.py'}:X")
    assert sys.path == path_before


def test_import_records_the_absolute_data_root(tmp_path, user, monkeypatch):
    """issue 28 item 6: faultrun and nfedge run read the recorded root from other folders."""
    import numpy as np

    from nfedge.data import DataConfig

    src, sd, _ = user
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 32, 32), dtype=np.uint8), np.arange(20) % 10
    np.savez(tmp_path / "digits.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    monkeypatch.chdir(tmp_path)
    p = import_model(ImportModelConfig(model_class=f"{src}:TinyNet", kwargs={"width": 6}, state_dict=str(sd),
                                       data=DataConfig(dataset="npz", root="digits.npz")), tmp_path / "imp", QUIET)
    assert load_checkpoint(p)[1]["meta"]["config"]["data"]["root"] == str(tmp_path / "digits.npz")
