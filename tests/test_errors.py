"""ralbook.errors.shorten: echoed values stay short and readable."""
import pytest

from ralbook.errors import shorten


def test_short_values_are_their_repr():
    assert shorten("abc") == "'abc'"
    assert shorten(12) == "12"
    assert shorten("a\x00b") == "'a\\x00b'"  # control characters are visible


def test_long_values_are_cut_to_about_the_limit():
    out = shorten("x" * 1_000_000)
    assert out.startswith("'xxx") and out.endswith("... (1000000 characters)")
    assert len(out) < 80 + len("... (1000000 characters)")
    cut = shorten(list(range(1000)), limit=40)
    assert len(cut) == 40 and cut.endswith("...") and cut.startswith("[0, 1, 2")


def test_build_model_raises_the_one_config_error():
    """``except errors.ConfigError`` catches a bad backbone: there is one ConfigError class, in ralbook.errors."""
    from ralbook.config import ModelConfig
    from ralbook.errors import ConfigError
    from ralbook.model import build_model

    with pytest.raises(ConfigError, match="model.backbone"):
        build_model(ModelConfig(backbone="no_such_backbone"))
