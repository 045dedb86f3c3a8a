"""Every configuration example in the config reference's EXAMPLES section
passes `sallyport -t` (with its certificate, key and CA paths pointed at
test files), so the documentation cannot drift from what the daemon
accepts."""
import re
from pathlib import Path

import pytest

from conftest import run_check
from smtp_helpers import issue

MAN_PAGE = Path(__file__).resolve().parents[2] / "docs" / "sallyport.conf.5"


def examples():
    text = MAN_PAGE.read_text()
    section = text[text.index(".SH EXAMPLES"):]
    section = section[:section.index(".SH SEE ALSO")]
    blocks = re.findall(r"^\.nf\n(.*?)^\.fi\n", section, flags=re.S | re.M)
    return [b for b in blocks if b.lstrip().startswith("[")]


def test_the_reference_has_examples():
    assert len(examples()) >= 3


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_passes_the_check(ca, tmp_path, index):
    cert, key = issue(ca, "mail.example.com")
    text = examples()[index].replace("\\-", "-")
    text = re.sub(r"^(cert\s*=\s*)\S+", rf"\g<1>{cert}", text, flags=re.M)
    text = re.sub(r"^(key\s*=\s*)\S+", rf"\g<1>{key}", text, flags=re.M)
    text = re.sub(r"^(ca\s*=\s*)\S+", rf"\g<1>{ca.cert}", text, flags=re.M)
    text = re.sub(r"^(user\s*=\s*)\S+", r"\g<1>nobody", text, flags=re.M)
    text = re.sub(r"^(users\s*=\s*)\S+", rf"\g<1>{tmp_path / 'users'}", text, flags=re.M)
    text = re.sub(r"^(maildir\s*=\s*)\S+", rf"\g<1>{tmp_path / 'mail'}", text, flags=re.M)
    (tmp_path / "users").write_text("")
    code, out = run_check(text, tmp_path)
    assert code == 0, f"example {index + 1}:\n{text}\n{out}"
