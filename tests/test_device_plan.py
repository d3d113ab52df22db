"""Planning for the device: the engine's cost model against QEMU's counts, flash sizes, device targets met in QEMU.

The QEMU tests need Debian's gcc-arm-none-eabi, newlib and qemu-system-arm (as test_mcu_board.py).
"""

from __future__ import annotations

import re

import pytest
import torch

from conftest import FASHION_SLICE
from edgeprune.config import RunConfig
from edgeprune.data import DataConfig, load_data
from edgeprune.export.tflite import export_tflite
from edgeprune.mcu.choice import weight_for_budget
from edgeprune.mcu.cost import COSTS, FLASH_WEIGHT
from edgeprune.mcu.measure import measure_on_mcu
from edgeprune.mcu.predict import DeviceBaseline, meet_target, predict_model, unit_costs
from edgeprune.mcu.units import parse_bytes
from edgeprune.mcu.target import plan_for_device
from edgeprune.report import device_target_line
from edgeprune.steps import check_device_target
from test_mcu_board import SmallNet, toolchain  # noqa: F401 (a fixture)

LAYERS = ("conv1.weight", "conv2.weight", "fc.weight")
PLAN = {"conv1.weight": 0.5, "conv2.weight": 0.8, "fc.weight": 0.9}
LAYER_TOLERANCE = 0.06
"""The cost model's stated fit (mcu/cost.py: within 6 % on every conv and FC layer it was fitted on)."""


@pytest.fixture(scope="module")
def small() -> tuple[SmallNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An untrained SmallNet (seeded), 32 calibration images and 2 test images with their labels."""
    splits = load_data(DataConfig(name="fashion-mnist", data_dir=str(FASHION_SLICE), val_size=0))
    torch.manual_seed(0)
    calibration = torch.stack([splits.train[i][0] for i in range(32)])
    images = torch.stack([splits.test[i][0] for i in range(2)])
    labels = torch.tensor([splits.test[i][1] for i in range(2)])
    return SmallNet().eval(), calibration, images, labels


def by_hand(model: SmallNet, sparsity: dict[str, float]) -> SmallNet:
    """A copy with the smallest |w| zeroed per layer by a k-th value threshold (no two weights tie: random init)."""
    pruned = SmallNet()
    pruned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, s in sparsity.items():
            w = dict(pruned.named_parameters())[name]
            k = round(s * w.numel())
            w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0
    return pruned


def qemu(model: SmallNet, calibration: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, folder) -> dict:
    return measure_on_mcu(export_tflite(model, folder / "m.tflite", calibration), images, labels, folder)


def test_cost_model_predicts_qemu_counts_per_layer(toolchain, small, tmp_path):
    """Each weighted layer's predicted instructions within 6 % of QEMU's count, the same dense/sparse choice, and weight +
    index bytes exactly; the total, with the dense run's other steps, within the same 6 % (1.3 to 4 % seen since the
    engine's requantization was refitted for ResNet-8)."""
    model, calibration, images, labels = small
    dense = qemu(model, calibration, images, labels, tmp_path / "dense")
    measured = qemu(by_hand(model, PLAN), calibration, images, labels, tmp_path / "sparse")
    baseline = DeviceBaseline.from_measurement(dense)
    for run, sparsity in ((dense, {}), (measured, PLAN)):
        predicted = predict_model(model, sparsity, calibration, baseline=baseline)
        weighted = [layer for layer in run["layers"] if layer["engine"] != "-"]
        assert list(predicted.layers) == list(LAYERS) and len(weighted) == 3
        for layer, (name, guess) in zip(weighted, predicted.layers.items()):
            assert guess.engine == layer["engine"], name
            assert guess.instructions == pytest.approx(layer["instructions"], rel=LAYER_TOLERANCE), name
            assert guess.weight_bytes + guess.index_bytes == layer["weight_bytes"] + layer["index_bytes"], name
        assert predicted.weight_index_bytes == run["weight_bytes"] + run["index_bytes"]
        assert predicted.instructions == pytest.approx(run["instructions"], rel=LAYER_TOLERANCE)
    # at this plan every layer runs sparse: their counts fell, and the prediction knows by how much
    assert [layer["engine"] for layer in measured["layers"] if layer["engine"] != "-"] == ["sparse"] * 3
    assert measured["instructions"] < 0.8 * dense["instructions"]


def test_unit_costs_are_the_kernels_prices(small):
    """conv2 (4 -> 8 channels, 3x3, output 14x14 pooled to 7x7 = 49 groups of four pixels) saves 49 x the price of
    an 8-bit entry's multiplication (COSTS["nonzero8"]) instructions per weight pruned; its 288 weights at 80 and 95 % keep 58 and 14 non-zeros, stored as 8-bit entries (a value and an
    entry each) plus 8 counts, uint8 as no run has more than 255 entries: (2 x 58 + 8 + 2 x 14 + 8) / (58 + 14) bytes per
    non-zero. fc's 4-bit entries
    take a value, half a byte, the escapes of long gaps and its counts: between 1.5 and 2 bytes."""
    model, calibration, _, _ = small
    costs = unit_costs(model, calibration)
    assert set(costs) == set(LAYERS)
    assert costs["conv2.weight"]["instructions"] == pytest.approx(49 * COSTS["nonzero8"], rel=0.02)
    assert costs["conv2.weight"]["bytes"] == pytest.approx((2 * 58 + 8 + 2 * 14 + 8) / (58 + 14))
    assert costs["conv1.weight"]["instructions"] == pytest.approx(14 * 14 * COSTS["nonzero8"], rel=0.02)  # 196 groups
    assert 1.5 < costs["fc.weight"]["bytes"] < 2.0
    assert costs["fc.weight"]["instructions"] >= 6.0  # FC_NONZERO, plus the escape test of 4-bit entries


def test_weight_for_budget_by_hand():
    """Layer a saves 20 B for 1000 instructions (50 a byte), layer b 40 B for 4000 (100 a byte); at the default rate
    (24 a byte) both stay fast: 150 B. 135 B needs a's switch (rate just over 50), 100 B both (just over 100)."""
    options = [[(1000.0, 50), (2000.0, 30)], [(1000.0, 100), (5000.0, 60)]]
    assert weight_for_budget(options, 200) == FLASH_WEIGHT
    assert weight_for_budget(options, 135) == pytest.approx(50, rel=1e-6)
    assert weight_for_budget(options, 100) == pytest.approx(100, rel=1e-6)
    with pytest.raises(ValueError, match="a weight budget of 80 B is below the 90 B"):
        weight_for_budget(options, 80)


@pytest.mark.parametrize("text, expected", [
    ("32768", 32768), (32768, 32768), ("32KB", 32000), ("32 kB", 32000), ("32 KiB", 32768), ("32kib", 32768),
    ("0.03MB", 30000), ("1.5 MiB", 1572864), ("100 B", 100), ("2e3", 2000),
])
def test_parse_bytes_reads_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["32 parsecs", "KB", "", "-1kB", "0", "32 K B", "nan", True])
def test_parse_bytes_refuses_in_one_line(text):
    with pytest.raises(ValueError, match=r"^cannot read .* as a flash size: give a positive number with B, kB, KiB, MB or "
                                         r"MiB \(kB = 1000 B, KiB = 1024 B\), e.g. 32KiB$"):
        parse_bytes(text)


def test_run_config_checks_device_targets():
    with pytest.raises(ValueError, match="cannot read '32 parsecs' as a flash size"):
        RunConfig(epochs=1, target_flash="32 parsecs")
    with pytest.raises(ValueError, match=r"fraction of the dense engine's instructions in \(0, 1\]"):
        RunConfig(epochs=1, target_instructions=0.0)
    with pytest.raises(ValueError, match="one device target"):
        RunConfig(epochs=1, target_instructions=0.3, target_flash="32KiB")
    with pytest.raises(ValueError, match="plan from the scan"):
        RunConfig(epochs=1, target_instructions=0.3, plan="global")
    with pytest.raises(ValueError, match="checked in QEMU on --mcu's board"):
        RunConfig(epochs=1, target_instructions=0.3, mcu="none")
    with pytest.raises(ValueError, match="unknown budget 'time'"):
        RunConfig(epochs=1, budget="time")
    assert RunConfig(epochs=1, budget="macs", target_flash="32 KiB").target_flash == "32 KiB"


def test_meet_target_refines_a_biased_prediction():
    """The device measures 20 % below what the cost model predicts: the first check lands under the 5 % band, the
    corrected goal lands in it. Both costs fall linearly from 1000 (densest) to 100 (sparsest, fraction 0.99)."""
    def predicted(f: float) -> float:
        return 1000 - 900 * f / 0.99

    def measured(f: float) -> float:
        return 0.8 * predicted(f)

    search = meet_target(predicted, measured, 500.0, "instructions")
    assert search.met and 475.0 <= search.measured <= 500.0
    assert len(search.checks) == 2 and search.checks[0]["measured"] < 475.0
    # the fraction found: 0.8 * (1000 - 900 f / 0.99) in [475, 500] <=> f in [0.4125, 0.4469]
    assert 0.4125 <= search.fraction <= 0.4469


def test_meet_target_names_what_the_sparsest_plan_reaches():
    with pytest.raises(ValueError, match=r"^the instructions target 50 is below what the sparsest plan reaches: "
                                         r"100 predicted, every layer at 99%; aim higher$"):
        meet_target(lambda f: 1000 - 900 * f / 0.99, lambda f: 0.0, 50.0, "instructions")
    with pytest.raises(ValueError, match=r"^the instructions target 50 \(0.050 of the dense 1,000\) is below what the "
                                         r"sparsest plan reaches: 100 \(0.100 of the dense 1,000\) predicted"):
        meet_target(lambda f: 1000 - 900 * f / 0.99, lambda f: 0.0, 50.0, "instructions", dense=1000.0)


def test_device_targets_are_met_in_qemu_or_refused(toolchain, small, tmp_path):
    """--target-instructions 0.6 on SmallNet (uniform plans): the plan's engine measures within 5 % under 0.6 of the
    dense engine's instructions, measured again here (the sparsest plan reaches about 0.52); an unreachable flash
    target names the range."""
    model, calibration, images, labels = small

    def uniform(f: float) -> dict[str, float]:
        return dict.fromkeys(LAYERS, f)

    result = plan_for_device(model, uniform, calibration, images, labels, tmp_path / "instructions", target_instructions=0.6)
    again = qemu(by_hand(model, result["sparsity"]), calibration, images, labels, tmp_path / "again")
    dense = qemu(model, calibration, images, labels, tmp_path / "dense")
    assert result["met"] and len(result["checks"]) <= 4
    assert 0.95 * 0.6 * dense["instructions"] <= again["instructions"] <= 0.6 * dense["instructions"]
    assert again["instructions"] == result["measured"]
    with pytest.raises(ValueError, match=r"^--target-flash 1,000 B is out of reach: the engine takes [0-9,]+ B \(sparsest "
                                         r"plan, code included\) to [0-9,]+ B \(dense\); aim in that range$") as error:
        plan_for_device(model, uniform, calibration, images, labels, tmp_path / "flash", target_flash="1kB")
    low, high = (int(n.replace(",", "")) for n in re.search(r"takes ([0-9,]+) B .* to ([0-9,]+) B", str(error.value)).groups())
    assert 1000 < low < high == dense["flash_bytes"]


def test_flash_target_is_met_in_qemu(toolchain, small, tmp_path):
    """--target-flash 6 KiB on SmallNet (uniform plans): the engine QEMU built is within 5 % under 6,144 B, and the cost
    model (weights + indices, plus the sparsest engine's code and constants) predicted it within 1 %."""
    model, calibration, images, labels = small
    result = plan_for_device(model, lambda f: dict.fromkeys(LAYERS, f), calibration, images, labels, tmp_path,
                             target_flash="6 KiB")
    assert result["met"] and result["quantity"] == "flash_bytes"
    assert 0.95 * 6144 <= result["mcu"]["flash_bytes"] == result["measured"] <= 6144
    assert result["predicted"] == pytest.approx(result["measured"], rel=0.01)


def test_the_final_model_is_checked_against_the_target_and_reported():
    """A record as plan_for_device_target writes it, checked with two final measurements: one inside the band
    [0.95 x 2,245,372, 2,245,372] = [2,133,103.4, 2,245,372], one under it; the report line says which."""
    device = {"quantity": "instructions", "target": 2245372.0, "target_fraction": 0.4, "met": True,
              "predicted": 2128880.0, "measured": 2183620, "prediction_error": -0.025, "checks": [{}, {}],
              "dense": {"instructions": 5613430, "flash_bytes": 207468}, "layers": [{"op": "CONV_2D"}]}
    inside = check_device_target(device, {"instructions": 2183600, "flash_bytes": 90000})
    under = check_device_target(device, {"instructions": 2133000, "flash_bytes": 90000})
    assert inside["final"] == {"instructions": 2183600, "estimated_cycles": None, "flash_bytes": 90000, "met": True}
    assert under["final"]["met"] is False and "layers" not in under
    line = device_target_line(inside)
    assert ("device target 0.4 of the dense engine's 5,613,430 instructions: QEMU measured 2,183,620 instructions "
            "(predicted 2,128,880, prediction -2.5%), met within 5 % after 2 QEMU check(s); the final model measures "
            "2,183,600 instructions, still met") in line
    assert device_target_line(under).endswith("the final model measures 2,133,000 instructions, NOT met")
    assert device_target_line(None) == ""
    cycles = {**device, "quantity": "estimated_cycles", "target": 3_000_000.0,
              "dense": {**device["dense"], "estimated_cycles": 7_500_000}}
    final = check_device_target(cycles, {"instructions": 2183600, "estimated_cycles": 2_900_000, "flash_bytes": 9})
    assert final["final"]["met"]  # 2,900,000 in [2,850,000, 3,000,000], whatever the instructions
    assert "device target 0.4 of the dense engine's 7,500,000 estimated cycles" in device_target_line(final)
    assert device_target_line(final).endswith("the final model measures 2,900,000 estimated cycles, still met")



def test_cycle_target_is_met_in_qemu(toolchain, small, tmp_path):
    """--target-cycles 0.6 on SmallNet (uniform plans): the engine measured again here is within 5 % under 0.6 of the
    dense engine's estimated cycles (both from the Cortex-M4 timing plugin); the instruction count alone is not what
    was met (the cycles per instruction differ between the dense and the sparse kernels)."""
    model, calibration, images, labels = small
    result = plan_for_device(model, lambda f: dict.fromkeys(LAYERS, f), calibration, images, labels, tmp_path / "plan",
                             target_cycles=0.6)
    again = qemu(by_hand(model, result["sparsity"]), calibration, images, labels, tmp_path / "again")
    dense = qemu(model, calibration, images, labels, tmp_path / "dense")
    assert result["met"] and result["quantity"] == "estimated_cycles" and result["target_fraction"] == 0.6
    assert 0.95 * 0.6 * dense["estimated_cycles"] <= again["estimated_cycles"] <= 0.6 * dense["estimated_cycles"]
    assert again["estimated_cycles"] == result["measured"] and result["dense"]["estimated_cycles"] == dense["estimated_cycles"]


def test_run_config_checks_the_cycle_target():
    with pytest.raises(ValueError, match=r"--target-cycles is a fraction of the dense engine's estimated cycles in \(0, 1\]"):
        RunConfig(epochs=1, target_cycles=1.5)
    with pytest.raises(ValueError, match="--target-instructions and --target-cycles were both given"):
        RunConfig(epochs=1, target_instructions=0.3, target_cycles=0.3)
    with pytest.raises(ValueError, match="needs a cycle estimate, but --mcu cortex-m7 has no estimate: Arm publishes"):
        RunConfig(epochs=1, target_cycles=0.3, mcu="cortex-m7")
    assert RunConfig(epochs=1, target_cycles=0.3).device_target == "--target-cycles"
