def test_extension_is_built_and_importable():
    import megatron_speech._C as ext

    assert "megatron_speech._C built with" in ext.build_info()


def test_a_failed_write_is_an_error_not_a_short_file():
    """The builder writes on a background thread; a write error must still reach the caller."""
    import os

    import numpy as np
    import pytest

    import megatron_speech._C as ext

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this machine")
    builder = ext.IndexedBuilder("/dev/full", 4, 1000)
    tokens = np.arange(1_000_000, dtype=np.int32) % 1000  # 4 MB: several buffers
    with pytest.raises(RuntimeError, match="write to /dev/full failed: No space left"):
        builder.add_segments(tokens, np.zeros(0, np.int32), np.zeros(1, np.uint8),
                             np.array([tokens.size]), np.array([1]), 1000, 0, -1, -1, -1)
        builder.finalize("/dev/null")
