"""`mediabind ui` as a user starts it: it prints its URL, serves the page, and will not
listen beyond loopback without a token."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from flows.cli import main

pytestmark = pytest.mark.timeout(120)


def test_it_refuses_the_network_without_a_token(capsys, monkeypatch):
    monkeypatch.delenv("MEDIABIND_UI_TOKEN", raising=False)
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_it_prints_its_url_and_serves_the_page(tmp_path):
    env = {**os.environ, "MEDIABIND_HOME": str(tmp_path), "MEDIABIND_STORE": "edge"}
    ui = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", "0"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert ui.stdout is not None
        line = ui.stdout.readline()
        assert line.startswith("mediabind ui: http://127.0.0.1:"), line + ui.stderr.read()
        url = line.split()[2]
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert 'id="search-form"' in page
        with pytest.raises(urllib.error.HTTPError) as caught:  # nothing ingested yet
            urllib.request.urlopen(url + "api/info", timeout=30)
        assert caught.value.code == 404 and b"detail" in caught.value.read()
    finally:
        ui.terminate()
        ui.wait(timeout=30)
