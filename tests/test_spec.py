import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_loader.spec import KernelSpec, looks_like_spec, parse_spec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("kernels-community/flash-attn2", KernelSpec("kernels-community/flash-attn2")),
        ("org/name@v2", KernelSpec("org/name", "v2", 2)),
        ("org/name@main", KernelSpec("org/name", "main")),
        ("org/name@0123456789abcdef0123456789abcdef01234567",
         KernelSpec("org/name", "0123456789abcdef0123456789abcdef01234567")),
        ("org/name:flash_attn_func", KernelSpec("org/name", function="flash_attn_func")),
        ("org/name@v1:fwd", KernelSpec("org/name", "v1", 1, "fwd")),
        ("paged|org/paged-attention", KernelSpec("org/paged-attention", paged=True)),
        ("  org/My.Repo_1  ", KernelSpec("org/My.Repo_1")),
    ],
)
def test_parse_valid(text, expected):
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(str(spec)) == spec  # round trip


def test_version_keyword_maps_to_branch():
    assert parse_spec("org/name", version=3) == KernelSpec("org/name", "v3", 3)
    assert parse_spec("org/name@v3", version=3).revision == "v3"
    with pytest.raises(ValueError, match="give only one"):
        parse_spec("org/name@main", version=3)
    for bad in (0, -1, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            parse_spec("org/name", version=bad)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("flash-attn2", "must be 'org/name'"),
        ("org/", "must be 'org/name'"),
        ("a/b/c", "must be 'org/name'"),
        ("org/../etc", "must be 'org/name'"),
        ("org/na--me", "must be 'org/name'"),
        ("org/name@", "revision"),
        ("org/name@a..b", "revision"),
        ("org/name@-x", "revision"),
        ("org/name@has space", "revision"),
        ("org/name:1fn", "not a Python identifier"),
        ("org/name:", "not a Python identifier"),
        ("fast|org/name", "unknown prefix 'fast'"),
    ],
)
def test_parse_invalid_names_the_input(text, fragment):
    with pytest.raises(ValueError) as e:
        parse_spec(text)
    assert fragment in str(e.value)
    assert repr(text.strip()) in str(e.value) or text.strip() == "" or repr(text) in str(e.value)


def test_non_string_rejected():
    with pytest.raises(ValueError, match="must be a string"):
        parse_spec(42)


def test_looks_like_spec():
    assert looks_like_spec("org/name")
    assert looks_like_spec("paged|org/name@v1:fn")
    for builtin in ("sdpa", "eager", "flash_attention_2", "paged|sdpa", None, 3):
        assert not looks_like_spec(builtin)


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_only_value_errors(text):
    try:
        spec = parse_spec(text)
    except ValueError as e:
        assert str(e)
        return
    # Anything accepted is safe to put into a URL path and a cache folder name.
    org, name = spec.repo_id.split("/")
    for part in (org, name):
        assert ".." not in part and not part.startswith((".", "-"))
    assert spec.revision is None or (".." not in spec.revision and " " not in spec.revision)
