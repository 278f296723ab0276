"""The rig's private apt configuration and the archive's kernel list (no network: apt output
is given as text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.upstream.archive import (
    SUITES,
    ArchiveError,
    Bases,
    PrivateApt,
    bases_from_indextargets,
    choose,
    kernels_from_stanzas,
    missing_suites,
    parse_stanzas,
    sources_list,
)

# A made-up mirror: the rig reads the real one from the system's apt configuration.
INDEXTARGETS = """\
http://mirror.example/debian-security/dists/bookworm-security/main/binary-amd64/Packages
http://mirror.example/debian/dists/bookworm-updates/main/binary-amd64/Packages
http://mirror.example/debian/dists/bookworm/main/binary-amd64/Packages
"""


def test_bases_come_from_the_systems_index_targets() -> None:
    b = bases_from_indextargets(INDEXTARGETS)
    assert b == Bases("http://mirror.example/debian", "http://mirror.example/debian-security")


def test_no_archive_configured_is_an_error() -> None:
    with pytest.raises(ArchiveError, match="no Debian archive"):
        bases_from_indextargets("")


def test_sources_list_names_every_suite_with_its_base() -> None:
    text = sources_list(bases_from_indextargets(INDEXTARGETS))
    lines = text.splitlines()
    assert len(lines) == len(SUITES)
    assert "http://mirror.example/debian sid main" in text
    assert "http://mirror.example/debian-security trixie-security main" in text
    assert "http://mirror.example/debian bullseye-security" not in text
    assert all(line.startswith("deb [arch=amd64 signed-by=") for line in lines)


def test_security_suites_are_left_out_without_a_security_base() -> None:
    text = sources_list(Bases("http://mirror.example/debian", None))
    assert "-security" not in text and "bookworm-backports" in text


def test_private_configuration_never_names_the_systems_files(tmp_path: Path) -> None:
    apt = PrivateApt(tmp_path / "apt", bases_from_indextargets(INDEXTARGETS))
    apt.setup()
    opts = apt.options()
    values = [opts[i + 1] for i in range(0, len(opts), 2)]
    for key in ("Dir::Etc::sourcelist", "Dir::Etc::sourceparts", "Dir::State", "Dir::Cache",
                "Dir::State::status"):
        (value,) = [v for v in values if v.startswith(key + "=")]
        assert value.split("=", 1)[1].startswith(str(tmp_path)), value
    assert (tmp_path / "apt" / "sources.list").read_text().count("deb ") == len(SUITES)
    assert (tmp_path / "apt" / "state" / "status").read_text() == ""
    assert not any("/etc/apt" in v for v in values)


def test_suites_the_archive_dropped_are_found_in_apts_error() -> None:
    err = ("E: The repository 'http://mirror.example/debian bullseye-backports Release' does "
           "not have a Release file.\nN: Updating from such a repository ...")
    assert missing_suites(err) == ["bullseye-backports"]


SHOW = """\
Package: linux-image-6.1.0-41-amd64
Version: 6.1.158-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool

Package: linux-image-6.1.0-57-amd64
Version: 6.1.192-3
Depends: kmod

Package: linux-image-7.3.4+deb13-amd64
Version: 7.3.4-1~bpo13+1
Depends: linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1),
 linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)

Package: linux-image-7.3.4+deb13-cloud-amd64
Version: 7.3.4-1~bpo13+1
Depends: linux-binary-7.3.4+deb13-cloud-amd64

Package: linux-image-5.10.0-46-amd64
Version: 5.10.262-1
Depends: kmod

Package: linux-image-6.12.118+deb13-amd64
Version: 6.12.118-1
Depends: kmod
"""


def test_kernels_from_the_archive() -> None:
    ks = kernels_from_stanzas(parse_stanzas(SHOW))
    assert [k.version for k in ks] == ["5.10.262", "6.1.158", "6.1.192", "6.12.118", "7.3.4"]
    k73 = ks[-1]
    # 7.x: the image package is a stub; the binary and modules packages come with it.
    assert k73.packages == ("linux-image-7.3.4+deb13-amd64", "linux-binary-7.3.4+deb13-amd64",
                            "linux-modules-7.3.4+deb13-amd64")
    assert k73.abi == "7.3.4+deb13-amd64" and k73.series == "7.3"
    assert ks[0].packages == ("linux-image-5.10.0-46-amd64",)


def test_choose_by_series_version_abi_and_latest() -> None:
    ks = kernels_from_stanzas(parse_stanzas(SHOW))
    got = choose(ks, ["5.10", "6.1", "6.12", "latest"])
    assert [k.version for k in got] == ["5.10.262", "6.1.192", "6.12.118", "7.3.4"]
    assert [k.version for k in choose(ks, ["6.1.158", "6.1.0-57-amd64", "7.3", "latest"])] == [
        "6.1.158", "6.1.192", "7.3.4"]  # the same kernel twice is run once
    with pytest.raises(ArchiveError, match=r"'4\.19' is not in the archive.*5\.10, 6\.1"):
        choose(ks, ["4.19"])
