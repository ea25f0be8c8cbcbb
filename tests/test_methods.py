"""The method registry: methods are picked by name, declare their settings, are
validated in the library's words, and declare their random generators."""

import keras
import numpy as np
import pytest

from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.settings import Setting, SettingError
from gacd_tf.trainers import METHODS, KDDistiller, MethodContext, build_method
from gacd_tf.trainers.training_checkpoint import find_seed_generators
from tiny_models import tiny


def networks():
    return (tiny(1, "student", batch_norm=False), tiny(2, "teacher", batch_norm=False))


def test_build_method_by_name_applies_settings_and_defaults():
    student, teacher = networks()
    kd = build_method("kd", student, teacher, kd_temperature=2.0)
    assert isinstance(kd, KDDistiller)
    assert kd.temperature == 2.0 and kd.alpha == 0.9  # given / declared default


def test_every_method_declares_valid_settings_with_help():
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert cls.REWEIGHT in (None, True, False), name
        for setting in cls.SETTINGS:
            assert isinstance(setting, Setting) and setting.help, (name, setting.name)
            assert setting.check(setting.default) == setting.default


@pytest.mark.parametrize("settings, fragment", [
    ({"kd_alpha": 1.5}, "alpha=1.5: must be <= 1.0"),
    ({"kd_temperature": 0.0}, "temperature=0.0: must be > 0"),
    ({"kd_temperature": float("nan")}, "must be a finite number"),
    ({"nce_k": 3}, "KDDistiller has no setting nce_k"),
])
def test_bad_settings_are_refused_in_the_library_s_words(settings, fragment):
    student, teacher = networks()
    with pytest.raises(ConfigError, match=None) as err:
        build_method("kd", student, teacher, **settings)
    assert fragment in str(err.value)


def test_setting_error_knows_its_setting_so_programs_can_name_the_flag():
    setting = Setting("gacd_x", 1, "X.", arg="x", kind="int", lower=1)
    with pytest.raises(SettingError) as err:
        setting.check(0)
    assert err.value.setting is setting and str(err.value) == "x=0: must be >= 1"
    with pytest.raises(SettingError):
        setting.check(1.5)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown distillation method 'nope'; choose one of: "
                       + ", ".join(METHODS.names())):
        build_method("nope", *networks())


def test_reweight_follows_the_method_default_unless_given():
    student, teacher = networks()
    ard, record = METHODS.get("ard").from_settings(student, teacher, {}, MethodContext())
    assert ard.reweight is False and record["reweight"] is False
    assert record["attack"]["steps"] == 10
    ard, record = METHODS.get("ard").from_settings(student, teacher, {},
                                                   MethodContext(reweight=True))
    assert ard.reweight is True and record["reweight"] is True


def test_a_user_attack_declares_its_generators_and_is_checkpointed():
    class MyAttack:  # no gacd_tf base class: found only through its declaration
        def __init__(self):
            self.rng = keras.random.SeedGenerator(7)

        def seed_generators(self):
            return {"rng": self.rng}

        def __call__(self, model, x, y):
            return x

    student, teacher = networks()
    attack = MyAttack()
    ard = METHODS.get("ard")(student, teacher, attack=attack)
    found = find_seed_generators(ard)
    assert found["attack.rng"] is attack.rng
    assert "eval_attack.seed_generator" in found


def test_a_teacher_that_outputs_probabilities_is_refused():
    student, teacher = networks()
    probabilities = keras.Sequential([teacher, keras.layers.Softmax()])
    for name in METHODS.names():
        if METHODS.get(name).NEEDS_TEACHER:
            with pytest.raises(ModelError, match="outputs probabilities .* not logits"):
                build_method(name, student, probabilities,
                             context=MethodContext(train_labels=np.arange(6) % 3))
    build_method("kd", student, teacher)  # logits: accepted
