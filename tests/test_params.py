"""The one settings object: defaults, validation messages, API forms, infotext round trip."""

import dataclasses
import re

import pytest

from lib_loratorio.errors import InvalidParameterError
from lib_loratorio.params import LoratorioParams


def test_defaults_are_valid_and_off():
    p = LoratorioParams()
    assert not p.enabled and p.mode == "Stack" and p.weight_norm == "max" and p.patch_size == 4
    assert [s for s in range(20) if p.is_refresh_step(s)] == [0, 10]        # refresh first 1, every 10
    assert [s for s in range(8) if LoratorioParams(refresh_first=2, refresh_every=3).is_refresh_step(s)] == [0, 1, 3, 6]
    assert p.temperature == 0.05 and p.recenter == 0.5 and p.top_k == 0 and p.max_batch == 0
    assert p.to_infotext() == {}


@pytest.mark.parametrize("name, value, message", [
    ("patch_size", 0, "patch_size=0 is invalid: it must be between 1 and 64"),
    ("patch_size", 2.5, "patch_size=2.5 is invalid: expected int"),
    ("temperature", -1, "temperature=-1.0 is invalid"),
    ("temperature", "warm", "temperature='warm' is invalid: expected float"),
    ("recenter", 1.5, "recenter=1.5 is invalid: it must be between 0.0 and 1.0"),
    ("mode", "Blend", "mode='Blend' is invalid: allowed values are LoRAtorio, LoRAtorio Fast, Composite, Switch, "
                      "Stack"),
    ("selection", "pixel", "allowed values are patch, global"),
    ("enabled", "maybe", "enabled='maybe' is invalid: expected bool"),
    ("top_k", -1, "top_k=-1 is invalid"),
])
def test_invalid_values_name_the_setting_and_what_is_allowed(name, value, message):
    with pytest.raises(InvalidParameterError, match=message.replace("(", "\\(").replace(".", "\\.")):
        LoratorioParams(**{name: value})


def test_empty_step_range_is_rejected():
    with pytest.raises(InvalidParameterError, match="step range"):
        LoratorioParams(step_start=0.6, step_end=0.4)


def test_api_dict_form_coerces_and_rejects_unknown_names():
    p = LoratorioParams.from_dict({"enabled": "true", "patch_size": "4", "temperature": 0.1, "pool": "a, b"})
    assert p.enabled is True and p.patch_size == 4 and p.temperature == 0.1 and p.pool == ["a", "b"]
    with pytest.raises(InvalidParameterError, match="Unknown LoRAtorio setting\\(s\\): patch, tau"):
        LoratorioParams.from_dict({"patch": 4, "tau": 1})


def test_positional_form_follows_field_order():
    p = LoratorioParams.from_args([True, "Composite", 16])
    assert (p.enabled, p.mode, p.patch_size) == (True, "Composite", 16)
    with pytest.raises(InvalidParameterError, match="at most"):
        LoratorioParams.from_args([None] * 100)


def test_infotext_round_trip():
    p = LoratorioParams(enabled=True, mode="Switch", patch_size=4, temperature=0.02, recenter=1.0,
                        top_k=2, selection="global", pool=["chars/alice", "bob"], show_weight_maps=True)
    fields = p.to_infotext()
    assert fields["LoRAtorio"] == "True" and fields["LoRAtorio patch size"] == "4"
    assert LoratorioParams.from_infotext(fields) == p
    assert LoratorioParams.from_infotext({"Steps": "20"}) is None
    # an image made before the Weights setting existed was made with the paper's weights
    del fields[LoratorioParams.infotext_key("weight_norm")]
    assert LoratorioParams.from_infotext(fields).weight_norm == "sum"


def test_infotext_keys_parse_in_the_webui():
    # A1111's infotext parser only reads keys made of word characters, spaces, '-' and '/'.
    key = re.compile(r"^\w[\w \-/]+$")
    assert all(key.match(k) for k in LoratorioParams(enabled=True, pool=["a"]).to_infotext())


def test_every_setting_has_ui_metadata():
    for f in dataclasses.fields(LoratorioParams):
        assert f.metadata["label"] and f.metadata["hint"], f.name


def test_choice_settings_are_enum_members_whose_strings_are_the_ui_and_infotext_values():
    from lib_loratorio.choices import Mode, OutsideSteps, TextEncoder

    p = LoratorioParams(enabled=True, mode="Switch", text_encoder="UNet only", outside_steps=OutsideSteps.OFF)
    assert p.mode is Mode.SWITCH and p.text_encoder is TextEncoder.UNET_ONLY and p.outside_steps is OutsideSteps.OFF
    assert p.mode == "Switch" and str(p.mode) == f"{p.mode}" == "Switch"                 # the UI's and API's string
    fields = p.to_infotext()
    assert (fields["LoRAtorio mode"], fields["LoRAtorio text encoder"]) == ("Switch", "UNet only")
    assert LoratorioParams.from_infotext(fields) == p
    assert LoratorioParams.__dataclass_fields__["mode"].metadata["choices"] == (
        "LoRAtorio", "LoRAtorio Fast", "Composite", "Switch", "Stack")
