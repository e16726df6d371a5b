"""Hostile inputs, fuzzed with hypothesis: spec strings, metadata.json, lock files, tree listings and bundle members
from a hostile Hub or a tampered file ('..', absolute paths, symlink names, huge sizes, wrong types).

The contract: such input either parses into something safe to use, or raises ValueError whose message names the
input (its repr, or the file it came from). Nothing else may escape. Examples per target:
KERNEL_LOADER_FUZZ_EXAMPLES (default 200, so CI stays fast; RELIABILITY.md records a 10,000+ run).
"""

from __future__ import annotations

import io
import json
import os
import re
import string
import tarfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kernel_loader.integrity import check_metadata, safe_relpath
from kernel_loader.lockfile import parse_lock
from kernel_loader.spec import parse_spec

N = int(os.environ.get("KERNEL_LOADER_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=N, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


hostile_names = st.one_of(
    st.sampled_from(["..", ".", "", "/", "/etc/passwd", "../../x", "a/../../b", "a//b", "C:\\x", "a\\..\\b",
                     "a\x00b", "build/../..", "~/.ssh/id", "link -> /etc", "x" * 600, "ok.py", "sub/ok.py",
                     "__init__.py", "metadata.json", "a/./b", "\u202e.py", "a\nb"]),
    st.text(min_size=0, max_size=40),
    st.lists(st.sampled_from(["..", ".", "a", "b", "", "build", "/"]), max_size=5).map("/".join),
)
commits = st.one_of(st.just("a" * 40), st.text(alphabet="0123456789abcdefABCDEF", min_size=0, max_size=45),
                    st.integers(), st.none())
b64 = st.one_of(st.just("A" * 43 + "="), st.text(max_size=90), st.integers(), st.none())
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False), st.text(max_size=20))


def names_input(e: ValueError, *needles: str) -> bool:
    msg = str(e)
    return any(n and n in msg for n in needles)


# ---------------------------------------------------------------------------------------------- spec strings

spec_text = st.one_of(
    st.text(max_size=80),
    st.builds(lambda a, b, c, d: f"{a}/{b}{c}{d}", st.text(string.printable, max_size=12),
              st.text(string.printable, max_size=12),
              st.sampled_from(["", "@v1", "@..", "@/x", "@v0", "@main", "@-x", "@a b"]),
              st.sampled_from(["", ":fn", ":1x", ":a.b", ":"])),
    st.builds(lambda s: "paged|" + s, st.text(max_size=30)),
)


@FUZZ
@given(spec_text)
@example("0/0\n:A")  # found by CI: '$' also matched before a final newline inside the repo id (now \Z)
@example("org/name@v1\n:fn")
def test_fuzz_spec_strings(text):
    try:
        spec = parse_spec(text)
    except ValueError as e:
        assert names_input(e, repr(text.strip()), repr(text)) or not text.strip(), str(e)
        return
    org, name = spec.repo_id.split("/")
    assert ".." not in spec.repo_id and safe_relpath(spec.repo_id, what="spec")
    if spec.revision is not None:
        assert ".." not in spec.revision and not spec.revision.startswith(("/", "-"))


@FUZZ
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.binary(max_size=8),
                 st.lists(st.text(max_size=3), max_size=2)))
def test_fuzz_spec_non_strings(value):
    with pytest.raises(ValueError, match="kernel spec must be a string"):
        parse_spec(value)


# ---------------------------------------------------------------------------------------------- metadata.json


def _meta(draw_id, files, extra):
    meta = {"name": "x", "id": draw_id, "version": 1, "license": "MIT", "backend": {"type": "cpu"},
            "python-depends": [], "digest": {"algorithm": "sha256", "files": files}}
    meta.update(extra)
    return json.dumps(meta).encode()


metadata_bytes = st.one_of(
    st.binary(max_size=200),
    st.builds(_meta, st.one_of(st.text(max_size=20), st.sampled_from(["os", "_ok_1", "a.b", "../x", "sys", ""])),
              st.dictionaries(hostile_names, b64, max_size=4),
              st.dictionaries(st.sampled_from(["backend", "digest", "version", "id", "zzz"]), json_scalars,
                              max_size=2)),
    st.builds(lambda n: b'{"id": "_x", "pad": "' + b"x" * n + b'"}', st.sampled_from([10, (1 << 20) + 1])),
)


@FUZZ
@given(metadata_bytes)
def test_fuzz_metadata_json(raw):
    where = "acme/fuzz@0123 build/torch-cpu"
    try:
        meta = check_metadata(raw, where=where)
    except ValueError as e:
        assert str(e).startswith(where), str(e)
        return
    assert meta.id.isidentifier() and "." not in meta.id
    for name in (meta.digest.files if meta.digest else {}):
        assert safe_relpath(name, what="digest") and name != "metadata.json"


# ---------------------------------------------------------------------------------------------- lock files

dependency = st.one_of(
    st.fixed_dictionaries({"repo-id": st.one_of(st.sampled_from(["acme/k", "a/../b", "/abs/x", "a", "a/b/c"]),
                                                st.text(max_size=15), json_scalars),
                           "version": st.one_of(st.integers(min_value=-2, max_value=2**64), st.booleans(),
                                                st.text(max_size=5))}),
    st.fixed_dictionaries({"repo-id": st.just("acme/k"), "revision": st.one_of(hostile_names, json_scalars)}),
    st.dictionaries(st.text(max_size=8), json_scalars, max_size=3),
)
lock_entry = st.one_of(
    st.fixed_dictionaries({"dependency": dependency, "lock": st.fixed_dictionaries({"commit": commits})}),
    st.dictionaries(st.sampled_from(["dependency", "lock", "variants"]), json_scalars, max_size=3),
    json_scalars,
)
digests_doc = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.builds(lambda commit, variants: json.dumps({"format": "kernel-loader-digests/1", "kernels": {
        "acme/k": {"commit": commit, "variants": variants}}}),
        st.one_of(st.just("a" * 40), commits),
        st.dictionaries(hostile_names, st.one_of(
            st.fixed_dictionaries({"algorithm": st.just("sha256"), "metadata.json": b64,
                                   "files": st.dictionaries(hostile_names, b64, max_size=3)}),
            json_scalars), max_size=3)),
)


@FUZZ
@given(st.one_of(st.lists(lock_entry, max_size=4).map(json.dumps), st.text(max_size=60),
                 st.just(json.dumps([{"dependency": {"repo-id": "acme/k", "version": 1},
                                      "lock": {"commit": "a" * 40}}]))),
       digests_doc)
def test_fuzz_lock_files(text, digests):
    where = "/proj/kernels.lock"
    try:
        lock = parse_lock(text, digests, where=where)
    except ValueError as e:
        assert where in str(e) or "kernel spec" in str(e), str(e)
        return
    for k in lock.kernels.values():
        assert ".." not in k.repo_id and len(k.commit) == 40
        for name, v in k.variants.items():
            assert "/" not in name and name not in ("..", ".")
            for rel in v.files:
                safe_relpath(rel, what="locked file")


# ---------------------------------------------------------------------------------------------- tree listings


@FUZZ
@given(st.lists(st.one_of(hostile_names, st.sampled_from(["torch-cpu", "torch213-cxx11-cpu-x86_64-linux",
                                                          "../torch-cpu", "torch-cpu/..", "torch-cpu\x00"])),
                max_size=8),
       st.one_of(st.dictionaries(st.text(max_size=8), st.one_of(commits, json_scalars), max_size=4), json_scalars))
def test_fuzz_tree_listings(names, refs):
    """What a hostile Hub (or a tampered listing cache file) can send: variant folder names and refs maps."""
    from kernel_loader.resolve import _valid_versions
    from kernel_loader.spec import COMMIT_RE as _COMMIT_RE
    from kernel_loader.variants import parse_variants

    variants, invalid = parse_variants(names)
    for v in variants:
        assert "/" not in v.variant_str and ".." not in v.variant_str and safe_relpath(v.variant_str, what="v")
    assert len(variants) + len(invalid) == len(names)  # nothing skipped silently: resolution names the invalid
    if _valid_versions(refs):
        assert all(_COMMIT_RE.match(c) and k.isdigit() for k, c in refs.items())


listing_entry = st.fixed_dictionaries({
    "type": st.sampled_from(["file", "directory", "symlink", 3]),
    "path": st.one_of(st.builds(lambda n: "build/torch-cpu/" + n, hostile_names), hostile_names),
    "oid": st.one_of(st.sampled_from(["a" * 40, "b" * 64, "A" * 40, "../x"]), json_scalars),
    "size": st.one_of(st.integers(min_value=-2, max_value=2**40), json_scalars),
}, optional={"lfs": st.one_of(json_scalars, st.fixed_dictionaries({"oid": st.sampled_from(["c" * 64, "d" * 40]),
                                                                   "size": st.integers(-1, 10)}))})


@FUZZ
@given(listing_entry)
def test_fuzz_variant_listing_entries(item):
    """A variant listing entry from a hostile Hub: refused with the value named, or a path inside the variant
    folder with an integer size and a hex blob id (the only things a download path is built from)."""
    from kernel_loader.containment import listed_file

    where = "acme/fuzz@0123 build/torch-cpu"
    try:
        f = listed_file(item, folder="build/torch-cpu", where=where)
    except ValueError as e:
        assert str(e).startswith(where), str(e)
        return
    if f is None:
        assert item["type"] == "directory"
        return
    assert safe_relpath(f.path, what="x") and f.size >= 0 and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", f.blob_id)


@FUZZ
@given(hostile_names)
def test_fuzz_safe_relpath(name):
    try:
        out = safe_relpath(name, what="listing")
    except ValueError as e:
        assert str(e).startswith("listing: path"), str(e)
        return
    parts = out.split("/")
    assert ".." not in parts and "" not in parts and not out.startswith("/") and "\\" not in out


# ---------------------------------------------------------------------------------------------- bundle members

member = st.tuples(
    st.one_of(hostile_names, st.sampled_from(["kernels/acme/k/" + "a" * 40 + "/build/torch-cpu/impl.py"])),
    st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.DIRTYPE,
                     tarfile.FIFOTYPE]),
    st.one_of(st.integers(min_value=0, max_value=64), st.just(1 << 40)),
)


@settings(max_examples=max(20, N // 4), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(member, max_size=4), st.booleans())
def test_fuzz_bundle_members(tmp_path_factory, members, with_manifest):
    """A bundle with a valid manifest (or none) followed by hostile members: ValueError naming the tar, and
    nothing becomes visible in the cache."""
    from kernel_loader.bundle import import_bundle

    d = tmp_path_factory.mktemp("fuzz-bundle")
    old = os.environ.get("KERNELS_CACHE")
    os.environ["KERNELS_CACHE"] = str(d / "cache")
    try:
        path = d / "b.tar"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if with_manifest:
                manifest = json.dumps({"format": "kernel-loader-bundle/1", "kernels.lock": json.dumps(
                    [{"dependency": {"repo-id": "acme/k", "version": 1}, "lock": {"commit": "a" * 40}}]),
                    "kernels.lock.digests": json.dumps({"format": "kernel-loader-digests/1", "kernels": {"acme/k": {
                        "commit": "a" * 40, "variants": {"torch-cpu": {
                            "algorithm": "sha256", "metadata.json": "A" * 43 + "=",
                            "files": {"impl.py": "A" * 43 + "="}}}}}})}).encode()
                info = tarfile.TarInfo("bundle.json")
                info.size = len(manifest)
                tar.addfile(info, io.BytesIO(manifest))
            for name, kind, size in members:
                info = tarfile.TarInfo(name[:300] or "x")
                info.type = kind
                if kind == tarfile.REGTYPE:
                    info.size = min(size, 64)
                    tar.addfile(info, io.BytesIO(b"x" * info.size))
                else:
                    info.linkname = "/etc/passwd"
                    tar.addfile(info)
        raw = bytearray(buf.getvalue())
        path.write_bytes(bytes(raw))
        with pytest.raises(ValueError) as e:
            import_bundle(path)
        assert str(path) in str(e.value), str(e.value)
        assert not list((d / "cache").glob("kernels--*/snapshots/*/build/*/*"))
    finally:
        if old is None:
            os.environ.pop("KERNELS_CACHE", None)
        else:
            os.environ["KERNELS_CACHE"] = old
