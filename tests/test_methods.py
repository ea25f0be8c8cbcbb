"""The method registry: methods are picked by name, declare their settings, are
validated in the library's words, and declare their random generators."""

import keras
import numpy as np
import pytest

from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.settings import Setting, SettingError
from gacd_tf.methods import METHODS, KDDistiller, MethodContext, build
from gacd_tf.training.training_checkpoint import find_seed_generators
from tiny_models import tiny


def networks():
    return (tiny(1, "student", batch_norm=False), tiny(2, "teacher", batch_norm=False))


def test_build_by_name_applies_settings_and_defaults():
    student, teacher = networks()
    kd = build("kd", student, teacher, kd_temperature=2.0)
    assert isinstance(kd, KDDistiller)
    assert kd.kd_temperature == 2.0 and kd.kd_alpha == 0.9  # given / declared default


def test_every_method_declares_valid_settings_with_help():
    for name in METHODS.names():
        cls = METHODS.get(name)
        assert cls.REWEIGHT in (None, True, False), name
        for setting in cls.SETTINGS:
            assert isinstance(setting, Setting) and setting.help, (name, setting.name)
            assert setting.check(setting.default) == setting.default


@pytest.mark.parametrize("settings, fragment", [
    ({"kd_alpha": 1.5}, "kd_alpha=1.5: must be <= 1.0"),
    ({"kd_temperature": 0.0}, "kd_temperature=0.0: must be > 0"),
    ({"kd_temperature": float("nan")}, "must be a finite number"),
    ({"nce_k": 3}, "KDDistiller has no setting nce_k"),
])
def test_bad_settings_are_refused_in_the_library_s_words(settings, fragment):
    student, teacher = networks()
    with pytest.raises(ConfigError, match=None) as err:
        build("kd", student, teacher, **settings)
    assert fragment in str(err.value)


def test_setting_error_knows_its_setting_so_programs_can_name_the_flag():
    setting = Setting("gacd_x", 1, "X.", kind="int", lower=1)
    with pytest.raises(SettingError) as err:
        setting.check(0)
    assert err.value.setting is setting and str(err.value) == "gacd_x=0: must be >= 1"
    assert err.value.argument == "gacd_x"
    with pytest.raises(SettingError):
        setting.check(1.5)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown distillation method 'nope'; choose one of: "
                       + ", ".join(METHODS.names())):
        build("nope", *networks())


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
                build(name, student, probabilities, train_labels=np.arange(6) % 3,
                      context=MethodContext(epochs=1, steps_per_epoch=1))
    build("kd", student, teacher)  # logits: accepted


def test_build_makes_every_registered_method_by_name():
    """gacd_tf.methods.build(name, student, teacher, train_labels=...) for every name."""
    import gacd_tf

    labels = np.arange(12) % 3
    for name in gacd_tf.methods.METHODS.names():
        student, teacher = networks()
        cls = METHODS.get(name)
        trainer = gacd_tf.methods.build(name, student, teacher if cls.NEEDS_TEACHER else None,
                                        train_labels=labels,
                                        context=MethodContext(epochs=2, steps_per_epoch=3))
        assert isinstance(trainer, cls), name
        assert trainer.student is student, name
        assert isinstance(trainer.extra_results(), dict), name


@pytest.mark.parametrize("name, given, missing", [
    ("gacd", {"teacher": True}, "needs train_labels"),
    ("igdm", {"teacher": True}, "needs epochs and steps_per_epoch in its context"),
    ("kd", {}, "needs a teacher"),
    ("gacd", {}, "needs a teacher"),
])
def test_build_names_the_missing_input(name, given, missing):
    student, teacher = networks()
    with pytest.raises(ConfigError, match=f"method '{name}' {missing}"):
        build(name, student, teacher if given.get("teacher") else None)


def test_gacd_reports_its_banks_through_its_own_hook():
    student, teacher = networks()
    gacd = build("gacd", student, teacher, train_labels=np.arange(12) % 3, nce_k=2,
                 embed_dim=4, context=MethodContext(seed=0))
    extra = gacd.extra_results()
    assert set(extra) == {"bank_cross_class_cosine", "bank_centred_within_class_cosine",
                          "teacher_bank_cross_class_cosine",
                          "teacher_bank_centred_within_class_cosine"}
    assert all(isinstance(v, float) for v in extra.values())
