def test_extension_is_built_and_importable():
    import megatron_speech._C as ext

    assert "megatron_speech._C built with" in ext.build_info()
