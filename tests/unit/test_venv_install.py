"""tfsb.install (make venv's installer): pip's settings passed to uv, and pip whenever uv cannot do the same."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tfsb import install


def test_the_effective_setting_is_pips_own_environment_over_its_install_section_over_global():
    listing = "\n".join([
        "global.index-url='https://mirror.example/simple'",
        "global.find-links='/opt/a'",
        "install.find-links='/opt/b'",
        ":env:.find-links='/opt/c /opt/d'",
        "global.extra-index-url='file:///x/simple file:///y/simple'",
        "download.index-url='https://elsewhere/simple'",  # not a section pip install reads
        "not a setting at all",
    ])
    assert install.pip_settings(listing) == {"index-url": "https://mirror.example/simple",
                                            "find-links": "/opt/c /opt/d",
                                            "extra-index-url": "file:///x/simple file:///y/simple"}


def test_pips_real_listing_is_read(tmp_path):
    """The format is pip's own: a config file and a PIP_* variable, listed by the pip of this environment."""
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nextra-index-url = file:///one/simple\n    file:///two/simple\n"
                      "trusted-host = mirror.example\n[install]\nfind-links = /opt/in-file\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(config), "PIP_FIND_LINKS": "/opt/from-env",
           "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], env=env, capture_output=True,
                             text=True, check=True).stdout
    settings = install.pip_settings(listing)
    assert settings["extra-index-url"].split() == ["file:///one/simple", "file:///two/simple"], listing
    assert settings["trusted-host"] == "mirror.example" and settings["find-links"] == "/opt/from-env", listing


def test_each_setting_becomes_the_uv_option_or_variable_that_does_the_same():
    call = install.uv_call({"index-url": "https://mirror.example/simple", "extra-index-url": "file:///x file:///y",
                            "find-links": "/opt/wheels", "constraint": "/etc/c1.txt /etc/c2.txt",
                            "trusted-host": "mirror.example", "no-index": "false", "cert": "/etc/ca.pem",
                            "proxy": "http://proxy:3128", "default-timeout": "180",
                            "disable-pip-version-check": "1"})
    assert call.options == [
        "--index-strategy", "unsafe-best-match",
        "--constraint", "/etc/c1.txt", "--constraint", "/etc/c2.txt",
        "--extra-index-url", "file:///x", "--extra-index-url", "file:///y",
        "--find-links", "/opt/wheels", "--index-url", "https://mirror.example/simple",
        "--allow-insecure-host", "mirror.example"]
    assert call.env == {"SSL_CERT_FILE": "/etc/ca.pem", "HTTPS_PROXY": "http://proxy:3128",
                        "HTTP_PROXY": "http://proxy:3128"}
    assert "--no-index" in install.uv_call({"no-index": "yes"}).options


def test_a_setting_without_a_translation_is_named():
    with pytest.raises(install.Untranslatable, match="only-binary=':all:'"):
        install.uv_call({"find-links": "/opt/wheels", "only-binary": ":all:"})


class Fake:
    """subprocess.run as the installer calls it: answers by the command's shape, and records each call."""

    def __init__(self, uv_code=0, uv_install_code=0, listing=""):
        self.calls, self.envs = [], []
        self.uv_code, self.uv_install_code, self.listing = uv_code, uv_install_code, listing

    def __call__(self, command, env=None, **_):
        self.calls.append(command)
        self.envs.append(env)
        if command[-1] == install.UV:
            code, out = self.uv_code, ""
        elif command[2:4] == ["pip", "config"]:
            code, out = 0, self.listing
        elif command[2] == "uv":
            code, out = self.uv_install_code, ""
        else:
            code, out = 0, ""
        return subprocess.CompletedProcess(command, code, stdout=out, stderr="")


def _kinds(fake):
    return ["uv" if c[2] == "uv" else "get-uv" if c[-1] == install.UV else "config" if c[3] == "config" else "pip"
            for c in fake.calls]


def test_uv_installs_with_pips_settings_and_pip_is_not_run():
    fake, said = Fake(listing=":env:.find-links='/opt/wheels'\nglobal.cert='/etc/ca.pem'"), []
    assert install.install("req.lock", "auto", python="/v/bin/python", run=fake, say=said.append) == 0
    assert _kinds(fake) == ["get-uv", "config", "uv"] and said == []
    uv = fake.calls[-1]
    assert uv[:5] == ["/v/bin/python", "-m", "uv", "pip", "install"] and uv[-2:] == ["-r", "req.lock"]
    assert "--compile-bytecode" in uv and uv[uv.index("--python") + 1] == "/v/bin/python"
    assert uv[uv.index("--find-links") + 1] == "/opt/wheels" and fake.envs[-1]["SSL_CERT_FILE"] == "/etc/ca.pem"


@pytest.mark.parametrize("fake, reason", [
    (Fake(uv_code=1), "pip could not install uv=="),
    (Fake(uv_install_code=2), "uv failed (exit 2, its error is above)"),
    (Fake(listing="global.only-binary=':all:'"), "pip's configuration sets only-binary"),
])
def test_auto_falls_back_to_pip_and_says_why(fake, reason):
    said = []
    assert install.install("req.lock", "auto", python="/v/bin/python", run=fake, say=said.append) == 0
    assert _kinds(fake)[-1] == "pip" and fake.calls[-1][-2:] == ["-r", "req.lock"]
    assert len(said) == 1 and reason in said[0] and "installing with pip instead" in said[0], said


def test_pip_only_and_uv_only():
    fake = Fake()
    assert install.install("req.lock", "pip", run=fake, say=print) == 0 and _kinds(fake) == ["pip"]
    fake, said = Fake(uv_install_code=3), []
    assert install.install("req.lock", "uv", run=fake, say=said.append) == 1
    assert "pip" not in _kinds(fake) and said and "TFSB_INSTALLER=uv: uv failed (exit 3" in said[0]


def test_a_wrong_choice_or_a_missing_file_is_an_error_before_anything_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TFSB_INSTALLER", "conda")
    assert install.main([]) == 2 and "TFSB_INSTALLER='conda'" in capsys.readouterr().err
    monkeypatch.setenv("TFSB_INSTALLER", "pip")
    assert install.main([str(tmp_path / "missing.lock")]) == 2
    assert "no such requirements file" in capsys.readouterr().err
